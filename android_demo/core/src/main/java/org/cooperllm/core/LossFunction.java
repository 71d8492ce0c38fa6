package org.cooperllm.core;

/**
 * What the ZO loop needs from a model: the mean loss of step {@code step}'s mini-batch at the given θ. Both forward
 * passes of one SPSA step use the same step index, so an implementation must return the same batch for it. On
 * Android this is the ExecuTorch {@code Module} running {@code model.pte}; on the JVM tests a toy quadratic.
 */
public interface LossFunction {
    /** Mean loss over step's batch at θ (θ is read, never kept: the caller perturbs it in place afterwards). */
    double loss(float[] theta, int step) throws Exception;

    /** Examples in step's batch (a report's n_examples). */
    int batchSize(int step);
}
