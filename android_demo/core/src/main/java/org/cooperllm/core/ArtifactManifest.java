package org.cooperllm.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * manifest.json of an exported artifact folder (cooperllm/manifest.py), read on the phone: the graph files, the input
 * order (input_ids, attention_mask, labels, then θ's tensors in layout order), the θ layout and the sha256 of every
 * file, which is verified before anything is loaded — a tampered or half-copied model is refused, not run.
 */
public final class ArtifactManifest {
    public static final String FILE = "manifest.json";
    public static final List<String> DATA_INPUTS = Collections.unmodifiableList(java.util.Arrays.asList("input_ids", "attention_mask", "labels"));

    /** One exported graph. */
    public static final class Graph {
        public final String file;
        public final String format;
        public final String backend;
        public final int batchSize;
        public final int seqLen;
        public final boolean paired;
        /**
         * The sequence lengths the graph runs at, ascending, the last seqLen: its length buckets ("seq_buckets";
         * a graph without them runs at seqLen only). One program with a dynamic sequence dimension (docs/EXPORT.md).
         */
        public final int[] lengths;

        Graph(Json.Obj g) {
            file = g.getString("file");
            format = g.getString("format");
            backend = g.getString("backend");
            batchSize = g.getInt("batch_size");
            seqLen = g.getInt("seq_len");
            paired = g.has("paired") && g.getBool("paired");
            List<Object> b = g.has("seq_buckets") ? g.getList("seq_buckets") : Collections.emptyList();
            lengths = new int[b.isEmpty() ? 1 : b.size()];
            if (b.isEmpty()) lengths[0] = seqLen;
            for (int i = 0; i < b.size(); i++) {
                lengths[i] = Math.toIntExact((Long) b.get(i));
                if (lengths[i] < 1 || (i > 0 && lengths[i] <= lengths[i - 1])) {
                    throw new IllegalArgumentException("graph " + file + ": seq_buckets must be positive and ascending, got " + b);
                }
            }
            if (lengths[lengths.length - 1] != seqLen) {
                throw new IllegalArgumentException("graph " + file + ": the last of seq_buckets must be seq_len " + seqLen + ", got " + b);
            }
        }

        /**
         * The length a batch runs at: the smallest bucket that holds its longest row. The rows are left-padded, so
         * the positions dropped before it are padding, which the graph masks: the loss and logits do not change.
         */
        public int lengthFor(DeviceData.Batch batch) {
            int longest = batch.longest();
            for (int n : lengths) if (n >= longest) return n;
            return seqLen;
        }
    }

    public final File folder;
    public final String modelName;
    public final ParamLayout layout;
    public final List<Graph> graphs;
    public final List<String> inputNames;
    public final List<String> outputNames;
    public final int[] labelTokenIds;
    public final int padTokenId;
    public final String tokenizerFile;
    public final String initialAdapterFile;
    public final Map<String, String> files;
    private final String manifestSha256;

    private ArtifactManifest(File folder, Json.Obj m, String manifestSha256) {
        this.folder = folder;
        this.manifestSha256 = manifestSha256;
        if (m.getInt("format_version") != 1) throw new IllegalArgumentException("manifest format_version is not supported");
        modelName = m.getString("model_name");
        layout = ParamLayout.fromJson(m.getObj("layout"));
        List<Graph> g = new ArrayList<>();
        for (Object o : m.getList("graphs")) g.add(new Graph(Json.obj(o, "graph")));
        graphs = Collections.unmodifiableList(g);
        inputNames = strings(m.getList("input_names"));
        outputNames = strings(m.getList("output_names"));
        List<Object> ids = m.getList("label_token_ids");
        labelTokenIds = new int[ids.size()];
        for (int i = 0; i < labelTokenIds.length; i++) labelTokenIds[i] = Math.toIntExact((Long) ids.get(i));
        padTokenId = m.getInt("pad_token_id");
        tokenizerFile = m.getString("tokenizer_file");
        initialAdapterFile = m.getString("initial_adapter_file");
        Map<String, String> f = new TreeMap<>();
        for (Map.Entry<String, Object> e : m.getObj("files").asMap().entrySet()) f.put(e.getKey(), (String) e.getValue());
        files = Collections.unmodifiableMap(f);
        List<String> expected = new ArrayList<>(DATA_INPUTS);
        for (ParamLayout.Tensor t : layout.tensors) expected.add(t.name);
        if (!inputNames.equals(expected)) {
            throw new IllegalArgumentException("manifest input_names must be the data inputs followed by the layout's tensors");
        }
        if (!outputNames.equals(java.util.Arrays.asList("loss", "label_logits"))) {
            throw new IllegalArgumentException("manifest outputs must be loss, label_logits; got " + outputNames);
        }
        if (graphs.isEmpty()) throw new IllegalArgumentException("manifest lists no graph");
        for (Graph gr : graphs) {
            if (!files.containsKey(gr.file)) throw new IllegalArgumentException("manifest has no sha256 for " + gr.file);
        }
    }

    private static List<String> strings(List<Object> l) {
        List<String> out = new ArrayList<>();
        for (Object o : l) out.add((String) o);
        return Collections.unmodifiableList(out);
    }

    /** Parses folder/manifest.json and (when verify) checks every listed file's sha256, streaming large files. */
    public static ArtifactManifest read(File folder, boolean verify) throws IOException {
        File mf = new File(folder, FILE);
        if (!mf.isFile()) throw new IOException(folder + " has no " + FILE + ": export artifacts with `cooperllm export`");
        byte[] raw = AtomicFiles.read(mf);
        ArtifactManifest m = new ArtifactManifest(folder, Json.parseObject(new String(raw, StandardCharsets.UTF_8)), Floats.sha256Hex(raw));
        if (verify) {
            for (Map.Entry<String, String> e : m.files.entrySet()) {
                File f = m.resolve(e.getKey());
                if (!f.isFile()) throw new IOException("artifact file missing: " + e.getKey());
                String got = sha256File(f);
                if (!got.equals(e.getValue())) throw new IOException("artifact file " + e.getKey() + " fails its sha256 (tampered or truncated)");
            }
        }
        return m;
    }

    /** A listed file inside the folder; names that would escape it are refused. */
    public File resolve(String name) throws IOException {
        File f = new File(folder, name);
        String root = folder.getCanonicalPath() + File.separator;
        if (!f.getCanonicalPath().startsWith(root)) throw new IOException("artifact name escapes its folder: " + name);
        return f;
    }

    /** The graph to run: the first of the given format (e.g. "pte"). */
    public Graph graph(String format) {
        for (Graph g : graphs) if (g.format.equals(format)) return g;
        throw new IllegalArgumentException("no " + format + " graph in the manifest");
    }

    /** sha256 by file name, including manifest.json itself: compared with a round's artifact_hashes. */
    public Map<String, String> fileHashes() {
        Map<String, String> h = new TreeMap<>(files);
        h.put(FILE, manifestSha256);
        return h;
    }

    static String sha256File(File f) throws IOException {
        try (InputStream in = new FileInputStream(f)) {
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            byte[] buf = new byte[1 << 20];
            int n;
            while ((n = in.read(buf)) > 0) md.update(buf, 0, n);
            return Floats.hex(md.digest());
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
