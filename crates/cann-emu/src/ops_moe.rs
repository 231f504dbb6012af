//! MoE and weight-quantized operators.
