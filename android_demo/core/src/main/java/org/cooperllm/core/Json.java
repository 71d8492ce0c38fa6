package org.cooperllm.core;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small strict JSON reader/writer (no external jars on the JVM core): objects become {@link Obj}, arrays
 * {@code List<Object>}, integers {@code Long} (or {@code BigInteger} beyond 64 bits), other numbers {@code Double}.
 * Depth and size are bounded so a hostile body cannot blow the stack.
 */
public final class Json {
    private static final int MAX_DEPTH = 64;

    private final String s;
    private int pos;

    private Json(String s) {
        this.s = s;
    }

    /** Raised for malformed JSON or a field of the wrong type; the message names the field. */
    public static final class JsonException extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;

        public JsonException(String msg) {
            super(msg);
        }
    }

    public static Object parse(String text) {
        Json p = new Json(text);
        p.ws();
        Object v = p.value(0);
        p.ws();
        if (p.pos != text.length()) throw p.err("trailing characters");
        return v;
    }

    public static Obj parseObject(String text) {
        return obj(parse(text), "document");
    }

    public static Obj obj(Object o, String what) {
        if (!(o instanceof Obj)) throw new JsonException(what + ": expected a JSON object");
        return (Obj) o;
    }

    @SuppressWarnings("unchecked")
    public static List<Object> list(Object o, String what) {
        if (!(o instanceof List)) throw new JsonException(what + ": expected a JSON array");
        return (List<Object>) o;
    }

    private JsonException err(String msg) {
        return new JsonException("malformed JSON at offset " + pos + ": " + msg);
    }

    private void ws() {
        while (pos < s.length()) {
            char c = s.charAt(pos);
            if (c == ' ' || c == '\n' || c == '\r' || c == '\t') pos++;
            else break;
        }
    }

    private Object value(int depth) {
        if (depth > MAX_DEPTH) throw err("nested too deeply");
        if (pos >= s.length()) throw err("unexpected end");
        char c = s.charAt(pos);
        switch (c) {
            case '{': return object(depth);
            case '[': return array(depth);
            case '"': return string();
            case 't': return literal("true", Boolean.TRUE);
            case 'f': return literal("false", Boolean.FALSE);
            case 'n': return literal("null", null);
            default: return number();
        }
    }

    private Object literal(String word, Object v) {
        if (!s.startsWith(word, pos)) throw err("unexpected character");
        pos += word.length();
        return v;
    }

    private Obj object(int depth) {
        pos++;
        Obj out = new Obj();
        ws();
        if (pos < s.length() && s.charAt(pos) == '}') {
            pos++;
            return out;
        }
        while (true) {
            ws();
            if (pos >= s.length() || s.charAt(pos) != '"') throw err("expected a key");
            String k = string();
            ws();
            if (pos >= s.length() || s.charAt(pos) != ':') throw err("expected ':'");
            pos++;
            ws();
            out.map.put(k, value(depth + 1));
            ws();
            if (pos >= s.length()) throw err("unterminated object");
            char c = s.charAt(pos++);
            if (c == '}') return out;
            if (c != ',') throw err("expected ',' or '}'");
        }
    }

    private List<Object> array(int depth) {
        pos++;
        List<Object> out = new ArrayList<>();
        ws();
        if (pos < s.length() && s.charAt(pos) == ']') {
            pos++;
            return out;
        }
        while (true) {
            ws();
            out.add(value(depth + 1));
            ws();
            if (pos >= s.length()) throw err("unterminated array");
            char c = s.charAt(pos++);
            if (c == ']') return out;
            if (c != ',') throw err("expected ',' or ']'");
        }
    }

    private String string() {
        pos++;
        StringBuilder b = new StringBuilder();
        while (true) {
            if (pos >= s.length()) throw err("unterminated string");
            char c = s.charAt(pos++);
            if (c == '"') return b.toString();
            if (c < 0x20) throw err("control character in string");
            if (c != '\\') {
                b.append(c);
                continue;
            }
            if (pos >= s.length()) throw err("unterminated escape");
            char e = s.charAt(pos++);
            switch (e) {
                case '"': b.append('"'); break;
                case '\\': b.append('\\'); break;
                case '/': b.append('/'); break;
                case 'b': b.append('\b'); break;
                case 'f': b.append('\f'); break;
                case 'n': b.append('\n'); break;
                case 'r': b.append('\r'); break;
                case 't': b.append('\t'); break;
                case 'u':
                    if (pos + 4 > s.length()) throw err("short \\u escape");
                    try {
                        b.append((char) Integer.parseInt(s.substring(pos, pos + 4), 16));
                    } catch (NumberFormatException ex) {
                        throw err("bad \\u escape");
                    }
                    pos += 4;
                    break;
                default: throw err("bad escape");
            }
        }
    }

    private Object number() {
        int start = pos;
        if (pos < s.length() && s.charAt(pos) == '-') pos++;
        boolean integral = true;
        while (pos < s.length()) {
            char c = s.charAt(pos);
            if (c >= '0' && c <= '9') pos++;
            else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                integral = false;
                pos++;
            } else break;
        }
        String t = s.substring(start, pos);
        if (t.isEmpty() || t.equals("-")) throw err("unexpected character");
        try {
            if (integral) {
                BigInteger bi = new BigInteger(t);
                return bi.bitLength() < 64 ? (Object) bi.longValue() : bi;
            }
            double d = Double.parseDouble(t);
            if (!Double.isFinite(d)) throw err("number out of range");
            return d;
        } catch (NumberFormatException ex) {
            throw err("bad number " + t);
        }
    }

    // --- writing ---------------------------------------------------------------------------------------------------

    /** A double as JSON text that any correctly rounding parser (Python's float) reads back to the same bits. */
    public static String number(double d) {
        if (!Double.isFinite(d)) throw new IllegalArgumentException("JSON cannot carry " + d);
        String t = Double.toString(d);
        if (Double.parseDouble(t) == d) return t;
        return new BigDecimal(d).toString();
    }

    public static String quote(String v) {
        StringBuilder b = new StringBuilder("\"");
        for (int i = 0; i < v.length(); i++) {
            char c = v.charAt(i);
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    /** A JSON object with typed getters that fail with the field's name. */
    public static final class Obj {
        final Map<String, Object> map = new LinkedHashMap<>();

        public Map<String, Object> asMap() {
            return Collections.unmodifiableMap(map);
        }

        public boolean has(String k) {
            return map.containsKey(k) && map.get(k) != null;
        }

        public Object get(String k) {
            if (!map.containsKey(k)) throw new JsonException("missing field '" + k + "'");
            return map.get(k);
        }

        public String getString(String k) {
            Object v = get(k);
            if (!(v instanceof String)) throw new JsonException("field '" + k + "' must be a string");
            return (String) v;
        }

        public long getLong(String k) {
            Object v = get(k);
            if (!(v instanceof Long)) throw new JsonException("field '" + k + "' must be a 64-bit integer");
            return (Long) v;
        }

        public int getInt(String k) {
            long v = getLong(k);
            if (v < Integer.MIN_VALUE || v > Integer.MAX_VALUE) throw new JsonException("field '" + k + "' out of range");
            return (int) v;
        }

        public double getDouble(String k) {
            Object v = get(k);
            if (v instanceof Long) return (double) (Long) v;
            if (v instanceof Double) return (Double) v;
            throw new JsonException("field '" + k + "' must be a number");
        }

        public boolean getBool(String k) {
            Object v = get(k);
            if (!(v instanceof Boolean)) throw new JsonException("field '" + k + "' must be a boolean");
            return (Boolean) v;
        }

        public Obj getObj(String k) {
            return obj(get(k), "field '" + k + "'");
        }

        public List<Object> getList(String k) {
            return list(get(k), "field '" + k + "'");
        }
    }
}
