package org.cooperllm.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * Layout of θ (cooperllm/layout.py): named tensors packed into one binary32 buffer, grouped into contiguous blocks.
 * Read from the manifest's {@code layout} object so the phone, the exporter and the cloud agree on every slice.
 */
public final class ParamLayout {
    /** One named tensor: its shape, block and offset into θ. */
    public static final class Tensor {
        public final String name;
        public final int[] shape;
        public final int block;
        public final int offset;
        public final int size;

        Tensor(String name, int[] shape, int block, int offset) {
            long n = 1;
            for (int d : shape) {
                if (d < 0) throw new IllegalArgumentException("tensor " + name + " has a negative dimension");
                n *= d;
                if (n > Integer.MAX_VALUE) throw new IllegalArgumentException("tensor " + name + " is too large");
            }
            this.name = name;
            this.shape = shape.clone();
            this.block = block;
            this.offset = offset;
            this.size = (int) n;
        }
    }

    /** A block: the slice [offset, offset + size) of θ. */
    public static final class Block {
        public final int index;
        public final String name;
        public final int offset;
        public final int size;

        Block(int index, String name, int offset, int size) {
            this.index = index;
            this.name = name;
            this.offset = offset;
            this.size = size;
        }
    }

    public final List<Tensor> tensors;
    public final List<Block> blocks;
    public final int total;

    private ParamLayout(List<Tensor> tensors, List<Block> blocks, int total) {
        this.tensors = Collections.unmodifiableList(tensors);
        this.blocks = Collections.unmodifiableList(blocks);
        this.total = total;
    }

    /** Entries in order: (name, shape, block name); tensors of one block must be adjacent. */
    public static ParamLayout build(List<String> names, List<int[]> shapes, List<String> blockNames) {
        List<Tensor> tensors = new ArrayList<>();
        List<Block> blocks = new ArrayList<>();
        long offset = 0;
        java.util.Set<String> seen = new java.util.HashSet<>();
        for (int i = 0; i < names.size(); i++) {
            String bn = blockNames.get(i);
            if (blocks.isEmpty() || !blocks.get(blocks.size() - 1).name.equals(bn)) {
                for (Block b : blocks) {
                    if (b.name.equals(bn)) throw new IllegalArgumentException("tensors of block '" + bn + "' are not adjacent");
                }
                blocks.add(new Block(blocks.size(), bn, (int) offset, 0));
            }
            if (!seen.add(names.get(i))) throw new IllegalArgumentException("duplicate tensor name " + names.get(i));
            Tensor t = new Tensor(names.get(i), shapes.get(i), blocks.size() - 1, (int) offset);
            tensors.add(t);
            offset += t.size;
            if (offset > Integer.MAX_VALUE - 8) throw new IllegalArgumentException("layout too large for one array");
            Block last = blocks.remove(blocks.size() - 1);
            blocks.add(new Block(last.index, last.name, last.offset, last.size + t.size));
        }
        return new ParamLayout(tensors, blocks, (int) offset);
    }

    /** From the manifest's layout object; offsets and sizes are checked against a rebuild. */
    public static ParamLayout fromJson(Json.Obj layout) {
        List<Object> bl = layout.getList("blocks");
        List<Object> tl = layout.getList("tensors");
        java.util.Map<Long, String> byIndex = new java.util.HashMap<>();
        for (Object o : bl) {
            Json.Obj b = Json.obj(o, "layout block");
            byIndex.put(b.getLong("index"), b.getString("name"));
        }
        List<String> names = new ArrayList<>();
        List<int[]> shapes = new ArrayList<>();
        List<String> blockNames = new ArrayList<>();
        for (Object o : tl) {
            Json.Obj t = Json.obj(o, "layout tensor");
            names.add(t.getString("name"));
            List<Object> sh = t.getList("shape");
            int[] shape = new int[sh.size()];
            for (int i = 0; i < shape.length; i++) {
                if (!(sh.get(i) instanceof Long)) throw new Json.JsonException("tensor shape must hold integers");
                shape[i] = Math.toIntExact((Long) sh.get(i));
            }
            shapes.add(shape);
            String bn = byIndex.get(t.getLong("block"));
            if (bn == null) throw new IllegalArgumentException("tensor " + names.get(names.size() - 1) + " names an unknown block");
            blockNames.add(bn);
        }
        ParamLayout out = build(names, shapes, blockNames);
        if (out.blocks.size() != bl.size()) throw new IllegalArgumentException("layout blocks are inconsistent");
        for (int i = 0; i < bl.size(); i++) {
            Json.Obj b = Json.obj(bl.get(i), "layout block");
            Block mine = out.blocks.get(i);
            if (b.getLong("index") != mine.index || b.getLong("offset") != mine.offset || b.getLong("size") != mine.size) {
                throw new IllegalArgumentException("parameter layout offsets or block sizes are inconsistent");
            }
        }
        for (int i = 0; i < tl.size(); i++) {
            if (Json.obj(tl.get(i), "layout tensor").getLong("offset") != out.tensors.get(i).offset) {
                throw new IllegalArgumentException("parameter layout tensor offsets are inconsistent");
            }
        }
        return out;
    }

    public Tensor tensor(String name) {
        for (Tensor t : tensors) if (t.name.equals(name)) return t;
        throw new IllegalArgumentException("no tensor named " + name + " in the layout");
    }
}
