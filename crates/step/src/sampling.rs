//! Per-request sampling parameters and what sampling returns for one sequence: the part of
//! the step contract the engine fills in and every device's sampler reads.

use serde::{Deserialize, Serialize};

/// Per-request sampling parameters, as the OpenAI API and vLLM's extras define them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0 (or negative in the API) disables.
    pub top_k: u32,
    /// 0.0 disables.
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// 1.0 disables; applied over prompt and output tokens, as vLLM does.
    pub repetition_penalty: f32,
    /// Added to the logits before any other processing.
    pub logit_bias: Vec<(u32, f32)>,
    /// Per-request seed: the same seed gives the same tokens whatever else is batched.
    pub seed: Option<u64>,
    /// Number of top logprobs to return besides the chosen token's (None: no logprobs).
    pub logprobs: Option<u32>,
    /// vLLM's `prompt_logprobs`: top logprobs per prompt position besides the prompt token's
    /// own (None: none, and the prompt's logits are never computed).
    #[serde(default)]
    pub prompt_logprobs: Option<u32>,
    /// Structured output: the engine keeps a matcher for it and hands the sampler a mask
    /// of allowed tokens each step (None: unconstrained).
    #[serde(default)]
    pub structured: Option<crate::structured::StructuredSpec>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: None,
            prompt_logprobs: None,
            structured: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    pub fn uses_penalties(&self) -> bool {
        self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
    }
}

/// What sampling returns for one row.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// Log-probability of the chosen token under the model's raw distribution (when asked).
    pub logprob: Option<f32>,
    /// Top-N (token, logprob) under the raw distribution, best first (when asked).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// One prompt position's logprobs: the actual next token's, and the row's best `top_n`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PromptLogprob {
    /// The prompt token these logprobs score.
    pub token_id: u32,
    pub logprob: f32,
    /// 1 + how many tokens score strictly higher (vLLM's rank, 1-based).
    pub rank: u32,
    /// Top (token, logprob), best first; rank `i + 1` for entry `i`.
    pub top: Vec<(u32, f32)>,
}
