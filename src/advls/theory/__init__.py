"""The paper's theory, computed: the triangular experiment (§3.1) and logit squeezing (§3.2)."""
