package org.cooperllm.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

/**
 * θ as safetensors (what GET /v1/adapter returns and what the device keeps on disk): an 8-byte little-endian header
 * length, a JSON header of {name: {dtype, shape, data_offsets}}, then the raw data. Only F32 tensors; every offset
 * and shape is checked against the layout, and nothing is ever unpickled.
 */
public final class Safetensors {
    private static final long MAX_HEADER = 100L << 20;

    private Safetensors() {}

    /** θ in layout order from a safetensors file holding exactly the layout's tensors. */
    public static float[] readTheta(byte[] data, ParamLayout layout) {
        if (data.length < 8) throw new IllegalArgumentException("safetensors: file shorter than its header length");
        ByteBuffer b = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        long hl = b.getLong(0);
        if (hl < 2 || hl > MAX_HEADER || 8 + hl > data.length) throw new IllegalArgumentException("safetensors: bad header length " + hl);
        Json.Obj header = Json.parseObject(new String(data, 8, (int) hl, StandardCharsets.UTF_8));
        long dataStart = 8 + hl;
        long dataLen = data.length - dataStart;
        float[] theta = new float[layout.total];
        int found = 0;
        for (Map.Entry<String, Object> e : header.asMap().entrySet()) {
            if (e.getKey().equals("__metadata__")) continue;
            ParamLayout.Tensor t;
            try {
                t = layout.tensor(e.getKey());
            } catch (IllegalArgumentException ex) {
                throw new IllegalArgumentException("safetensors: tensor " + e.getKey() + " is not in the adapter layout");
            }
            Json.Obj info = Json.obj(e.getValue(), "safetensors entry " + e.getKey());
            if (!"F32".equals(info.getString("dtype"))) throw new IllegalArgumentException("safetensors: " + e.getKey() + " is not F32");
            java.util.List<Object> shape = info.getList("shape");
            if (shape.size() != t.shape.length) throw new IllegalArgumentException("safetensors: " + e.getKey() + " has the wrong rank");
            for (int i = 0; i < shape.size(); i++) {
                if (!(shape.get(i) instanceof Long) || (Long) shape.get(i) != t.shape[i]) {
                    throw new IllegalArgumentException("safetensors: " + e.getKey() + " has shape " + shape + ", layout says "
                            + java.util.Arrays.toString(t.shape));
                }
            }
            java.util.List<Object> offs = info.getList("data_offsets");
            if (offs.size() != 2 || !(offs.get(0) instanceof Long) || !(offs.get(1) instanceof Long)) {
                throw new IllegalArgumentException("safetensors: bad data_offsets for " + e.getKey());
            }
            long s = (Long) offs.get(0), en = (Long) offs.get(1);
            if (s < 0 || en < s || en > dataLen || en - s != 4L * t.size) {
                throw new IllegalArgumentException("safetensors: data_offsets of " + e.getKey() + " are out of bounds");
            }
            float[] v = Floats.fromLittleEndian(data, (int) (dataStart + s), t.size);
            for (float x : v) if (!Float.isFinite(x)) throw new IllegalArgumentException("safetensors: adapter contains NaN or Inf");
            System.arraycopy(v, 0, theta, t.offset, t.size);
            found++;
        }
        if (found != layout.tensors.size()) {
            throw new IllegalArgumentException("safetensors: file holds " + found + " of the layout's " + layout.tensors.size() + " tensors");
        }
        return theta;
    }

    /** One tensor of a safetensors file: F32 values in f32, I64 values in i64 (the other is null). */
    public static final class Typed {
        public final String dtype;
        public final long[] shape;
        public final float[] f32;
        public final long[] i64;

        Typed(String dtype, long[] shape, float[] f32, long[] i64) {
            this.dtype = dtype;
            this.shape = shape;
            this.f32 = f32;
            this.i64 = i64;
        }
    }

    /** Every tensor of a file (F32 or I64 only), validated like readTheta: offsets in bounds, sizes consistent. */
    public static Map<String, Typed> readTensors(byte[] data) {
        if (data.length < 8) throw new IllegalArgumentException("safetensors: file shorter than its header length");
        ByteBuffer b = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        long hl = b.getLong(0);
        if (hl < 2 || hl > MAX_HEADER || 8 + hl > data.length) throw new IllegalArgumentException("safetensors: bad header length " + hl);
        Json.Obj header = Json.parseObject(new String(data, 8, (int) hl, StandardCharsets.UTF_8));
        long dataStart = 8 + hl;
        long dataLen = data.length - dataStart;
        Map<String, Typed> out = new java.util.LinkedHashMap<>();
        for (Map.Entry<String, Object> e : header.asMap().entrySet()) {
            if (e.getKey().equals("__metadata__")) continue;
            Json.Obj info = Json.obj(e.getValue(), "safetensors entry " + e.getKey());
            String dtype = info.getString("dtype");
            int width;
            if ("F32".equals(dtype)) width = 4;
            else if ("I64".equals(dtype)) width = 8;
            else throw new IllegalArgumentException("safetensors: " + e.getKey() + " has unsupported dtype " + dtype);
            java.util.List<Object> sh = info.getList("shape");
            long[] shape = new long[sh.size()];
            long n = 1;
            for (int i = 0; i < shape.length; i++) {
                if (!(sh.get(i) instanceof Long) || (Long) sh.get(i) < 0) throw new IllegalArgumentException("safetensors: bad shape of " + e.getKey());
                shape[i] = (Long) sh.get(i);
                n *= shape[i];
                if (n > Integer.MAX_VALUE / 8) throw new IllegalArgumentException("safetensors: " + e.getKey() + " is too large");
            }
            java.util.List<Object> offs = info.getList("data_offsets");
            if (offs.size() != 2 || !(offs.get(0) instanceof Long) || !(offs.get(1) instanceof Long)) {
                throw new IllegalArgumentException("safetensors: bad data_offsets for " + e.getKey());
            }
            long s0 = (Long) offs.get(0), s1 = (Long) offs.get(1);
            if (s0 < 0 || s1 < s0 || s1 > dataLen || s1 - s0 != n * width) {
                throw new IllegalArgumentException("safetensors: data_offsets of " + e.getKey() + " are out of bounds");
            }
            int off = (int) (dataStart + s0);
            if (width == 4) {
                out.put(e.getKey(), new Typed(dtype, shape, Floats.fromLittleEndian(data, off, (int) n), null));
            } else {
                long[] v = new long[(int) n];
                ByteBuffer lb = ByteBuffer.wrap(data, off, 8 * (int) n).order(ByteOrder.LITTLE_ENDIAN);
                for (int i = 0; i < v.length; i++) v[i] = lb.getLong();
                out.put(e.getKey(), new Typed(dtype, shape, null, v));
            }
        }
        return out;
    }

    /** Named int64/float32 tensors as a safetensors file (header in the given order; "order" in the metadata). */
    public static byte[] writeInputs(List<GraphInputs.Input> inputs) {
        StringBuilder h = new StringBuilder("{\"__metadata__\":{\"order\":");
        StringBuilder order = new StringBuilder();
        for (GraphInputs.Input x : inputs) order.append(order.length() > 0 ? "," : "").append(x.name);
        h.append(Json.quote(order.toString())).append('}');
        long off = 0;
        for (GraphInputs.Input x : inputs) {
            long bytes = x.i64 != null ? 8L * x.i64.length : 4L * x.f32.length;
            h.append(',').append(Json.quote(x.name)).append(":{\"dtype\":\"").append(x.i64 != null ? "I64" : "F32")
                    .append("\",\"shape\":[");
            for (int i = 0; i < x.shape.length; i++) h.append(i > 0 ? "," : "").append(x.shape[i]);
            h.append("],\"data_offsets\":[").append(off).append(',').append(off + bytes).append("]}");
            off += bytes;
        }
        h.append('}');
        while ((h.length() + 8) % 8 != 0) h.append(' ');
        byte[] hb = h.toString().getBytes(StandardCharsets.UTF_8);
        ByteBuffer out = ByteBuffer.allocate((int) (8 + hb.length + off)).order(ByteOrder.LITTLE_ENDIAN);
        out.putLong(hb.length).put(hb);
        for (GraphInputs.Input x : inputs) {
            if (x.i64 != null) for (long v : x.i64) out.putLong(v);
            else for (float v : x.f32) out.putFloat(v);
        }
        return out.array();
    }

    /** θ as a safetensors file, tensors in layout order (readable by safetensors.numpy.load). */
    public static byte[] writeTheta(float[] theta, ParamLayout layout) {
        if (theta.length != layout.total) throw new IllegalArgumentException("θ does not match the layout");
        StringBuilder h = new StringBuilder("{");
        long off = 0;
        for (ParamLayout.Tensor t : layout.tensors) {
            if (h.length() > 1) h.append(',');
            h.append(Json.quote(t.name)).append(":{\"dtype\":\"F32\",\"shape\":[");
            for (int i = 0; i < t.shape.length; i++) h.append(i > 0 ? "," : "").append(t.shape[i]);
            h.append("],\"data_offsets\":[").append(off).append(',').append(off + 4L * t.size).append("]}");
            off += 4L * t.size;
        }
        h.append('}');
        while ((h.length() + 8) % 8 != 0) h.append(' ');
        byte[] hb = h.toString().getBytes(StandardCharsets.UTF_8);
        ByteBuffer out = ByteBuffer.allocate(8 + hb.length + 4 * theta.length).order(ByteOrder.LITTLE_ENDIAN);
        out.putLong(hb.length).put(hb);
        for (ParamLayout.Tensor t : layout.tensors) for (int i = 0; i < t.size; i++) out.putFloat(theta[t.offset + i]);
        return out.array();
    }
}
