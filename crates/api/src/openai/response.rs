//! The OpenAI API's responses and stream chunks, with vLLM's extras (prompt logprobs, token
//! ids), shaped as OpenAI's and vLLM's are; their OpenAPI schemas derive from them.

use serde::Serialize;
use serde_json::{Map, Value as Json};
use utoipa::ToSchema;

/// Logprobs cannot be -inf in JSON; vLLM sends -9999.0 instead.
pub fn finite_logprob(l: f32) -> f32 {
    if l.is_finite() {
        l
    } else {
        -9999.0
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl Usage {
    pub fn new(prompt: usize, completion: usize, cached: usize) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached,
            },
        }
    }
}

/// `usage` of a stream chunk: absent, or `null` on every chunk but the last when the client
/// asked for usage (as OpenAI sends it).
pub type ChunkUsage = Option<Option<Usage>>;

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct CompletionLogprobs {
    pub text_offset: Vec<usize>,
    pub token_logprobs: Vec<Option<f32>>,
    pub tokens: Vec<String>,
    pub top_logprobs: Vec<Option<Map<String, Json>>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
    /// vLLM's extra: the stop string or token id that ended the choice.
    pub stop_reason: Json,
    /// vLLM's extra, when asked for: see [`PromptLogprobs`].
    #[serde(skip_serializing_if = "Option::is_none")]
    // utoipa renders a type alias as a reference to its head type ("Vec"): spell it out.
    #[schema(value_type = Option<Vec<Option<std::collections::BTreeMap<String, RankedLogprob>>>>)]
    pub prompt_logprobs: Option<PromptLogprobs>,
    /// vLLM's extra, with `return_token_ids`: the prompt's token ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
    /// vLLM's extra, with `return_token_ids`: the generated token ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// vLLM's `Logprob`: a token's logprob, its rank in the vocabulary and its text.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct RankedLogprob {
    pub logprob: f32,
    pub rank: u32,
    pub decoded_token: String,
}

/// vLLM's `prompt_logprobs`: `null` for the first prompt token, then per token a map from
/// token id to its [`RankedLogprob`] (the prompt token's own, and the top N).
pub type PromptLogprobs = Vec<Option<std::collections::BTreeMap<u32, RankedLogprob>>>;

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: ChunkUsage,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as OpenAI sends it.
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: Option<String>,
    /// Set when the server runs a reasoning parser (`reasoning` is vLLM's newer name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
    pub stop_reason: Json,
    /// vLLM's extra, with `return_token_ids`: the generated token ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    /// vLLM's extra, when asked for (of the templated prompt).
    #[serde(skip_serializing_if = "Option::is_none")]
    // utoipa renders a type alias as a reference to its head type ("Vec"): spell it out.
    #[schema(value_type = Option<Vec<Option<std::collections::BTreeMap<String, RankedLogprob>>>>)]
    pub prompt_logprobs: Option<PromptLogprobs>,
    /// vLLM's extra, with `return_token_ids`: the templated prompt's token ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, ToSchema)]
pub struct DeltaFunctionCall {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// One piece of a streamed tool call: the first carries id, type and name; later ones more
/// of the arguments.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct DeltaToolCall {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: DeltaFunctionCall,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<DeltaToolCall>,
}

impl ChatDelta {
    pub fn is_empty(&self) -> bool {
        self.role.is_none()
            && self.content.is_none()
            && self.reasoning_content.is_none()
            && self.tool_calls.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Json>,
    /// vLLM's extra, with `return_token_ids`: the token ids this chunk adds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: ChunkUsage,
    /// vLLM's extra, with `return_token_ids`: the templated prompt's token ids, in each
    /// choice's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: String,
    pub parent: Option<String>,
    pub max_model_len: usize,
    pub permission: Vec<Json>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}
