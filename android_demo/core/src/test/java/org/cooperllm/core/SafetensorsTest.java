package org.cooperllm.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.List;

/** θ ↔ safetensors: round trip in layout order, and clear errors for files that do not fit the layout. */
public class SafetensorsTest {
    private final ParamLayout layout = ParamLayout.build(List.of("l0.A", "l0.B", "head"),
            List.of(new int[] {2, 3}, new int[] {3, 2}, new int[] {4}), List.of("layer.0", "layer.0", "head"));

    private static byte[] file(String header, float[] data) {
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(8 + h.length + 4 * data.length).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(h.length).put(h);
        for (float v : data) b.putFloat(v);
        return b.array();
    }

    @Test
    public void roundTripKeepsEveryBit() {
        float[] theta = new float[layout.total];
        for (int i = 0; i < theta.length; i++) theta[i] = (float) Math.sin(i) * 1e-3f;
        theta[3] = -0.0f;
        byte[] f = Safetensors.writeTheta(theta, layout);
        Assert.bitsEq(theta, Safetensors.readTheta(f, layout), "round trip");
        Assert.eq(2, layout.blocks.size(), "blocks");
        Assert.eq(12, layout.blocks.get(0).size, "block 0 size");
    }

    @Test
    public void readsTensorsInAnyHeaderOrder() {
        // safetensors writers sort names; the layout decides where each tensor goes in θ
        float[] data = new float[16];
        for (int i = 0; i < 16; i++) data[i] = i;
        String h = "{\"head\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                + "\"l0.A\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[16,40]},"
                + "\"l0.B\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[40,64]},\"__metadata__\":{\"a\":\"b\"}}";
        float[] theta = Safetensors.readTheta(file(h, data), layout);
        Assert.eq(4.0f, theta[0], "l0.A first value");
        Assert.eq(0.0f, theta[12], "head first value");
    }

    @Test
    public void badFilesFailClearly() {
        float[] data = new float[16];
        String wrongShape = "{\"head\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[0,16]}}";
        Assert.raises(IllegalArgumentException.class, () -> Safetensors.readTheta(file(wrongShape, data), layout), "shape");
        String extra = "{\"other\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
        Assert.raises(IllegalArgumentException.class, () -> Safetensors.readTheta(file(extra, data), layout), "extra tensor");
        String outOfBounds = "{\"head\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[60,76]}}";
        Assert.raises(IllegalArgumentException.class, () -> Safetensors.readTheta(file(outOfBounds, data), layout), "bounds");
        String f16 = "{\"head\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]}}";
        Assert.raises(IllegalArgumentException.class, () -> Safetensors.readTheta(file(f16, data), layout), "dtype");
        Assert.raises(IllegalArgumentException.class, () -> Safetensors.readTheta(new byte[] {1, 2}, layout), "short");
        byte[] huge = new byte[16];
        huge[7] = 0x7f;
        Assert.raises(IllegalArgumentException.class, () -> Safetensors.readTheta(huge, layout), "header length");
        String missing = "{\"head\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
        Assert.raises(IllegalArgumentException.class, () -> Safetensors.readTheta(file(missing, data), layout), "missing tensors");
    }
}
