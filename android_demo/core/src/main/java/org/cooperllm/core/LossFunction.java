package org.cooperllm.core;

/**
 * What the ZO loop needs from a model: the mean loss of mini-batch {@code batch} at the given θ. Both forward passes
 * of one SPSA step, and every direction a round measures on the same batch, use the same index, so an implementation
 * must return the same examples for it. On Android this is the ExecuTorch {@code Module} running {@code model.pte}; in
 * the JVM tests a toy quadratic.
 */
public interface LossFunction {
    /** Mean loss over the batch at θ (θ is read, never kept: the caller perturbs it in place afterwards). */
    double loss(float[] theta, int batch) throws Exception;

    /** Examples in the batch (a report's n_examples). */
    int batchSize(int batch);
}
