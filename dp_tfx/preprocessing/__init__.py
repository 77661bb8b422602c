"""DP statistics for preprocessing: what a serving graph may carry from the training data.

A vocabulary, mean or quantile computed exactly over the training records can reveal one person
(a token only they used); these are computed with PipelineDP on Beam instead, each as an
(epsilon, delta) event for the pipeline's one budget.
"""
