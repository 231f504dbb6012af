//! Compiling a constraint into a grammar once: llguidance's limits bound the work a hostile
//! schema can cause, the spec's size is capped before parsing, and compiled grammars are
//! cached by content so repeated schemas (the usual case) cost nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::TokEnv;
use llguidance::{ParserFactory, TokenParser};
use qwen3_step::{ConstraintKind, StructuredSpec};

use crate::{GuidedError, SeqMatcher};

/// Bounds on what one constraint may cost.
#[derive(Clone, Debug)]
pub struct CompilerLimits {
    /// Bytes of schema, regex, choices or grammar text.
    pub max_spec_bytes: usize,
    /// Compiled grammars kept.
    pub cache_entries: usize,
    /// llguidance's own limits (lexer fuel, grammar size, Earley items per mask).
    pub parser: ParserLimits,
    /// JSON may carry any whitespace between tokens (vLLM's `disable_any_whitespace`
    /// false). Off by default: JSON is then written as Python's `json.dumps` does (`", "`,
    /// `": "`), so a model cannot spend its tokens on whitespace, a known failure of
    /// unbounded whitespace with weak models.
    pub any_whitespace: bool,
}

impl Default for CompilerLimits {
    fn default() -> Self {
        Self {
            max_spec_bytes: 256 * 1024,
            cache_entries: 256,
            // llguidance's defaults are sized for schemas of a few MB compiled in well under a
            // second; the error text is shown to clients, so keep it free of parser dumps.
            parser: ParserLimits {
                verbose_errors: false,
                ..ParserLimits::default()
            },
            any_whitespace: false,
        }
    }
}

/// A compiled constraint: a fresh parser each sequence clones.
pub struct CompiledGrammar {
    /// Behind a mutex so the cache can be shared across threads whether or not llguidance's
    /// parser is `Sync`; it is only locked to clone it.
    parser: Mutex<TokenParser>,
}

impl CompiledGrammar {
    /// A parser at the start. A plain clone shares the lexer's state cache (behind
    /// llguidance's own mutex) with every other sequence of this grammar, so later requests
    /// start warm.
    pub(crate) fn fresh_parser(&self) -> TokenParser {
        self.parser
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

struct Cache {
    map: HashMap<ConstraintKind, Arc<CompiledGrammar>>,
    order: VecDeque<ConstraintKind>,
}

/// The parser factory, or why it could not be built (the token table is built once).
type Factory = Result<ParserFactory, String>;

/// Compiles constraints for one tokenizer and vocabulary; shared by the API (which
/// validates before scheduling) and the engine (which makes the matchers).
pub struct Compiler {
    /// Set once the token table is built: at construction, or by a background thread
    /// ([`Compiler::in_background`]) that the first compile waits for.
    factory: Arc<OnceLock<Factory>>,
    vocab: usize,
    limits: CompilerLimits,
    cache: Mutex<Cache>,
}

fn factory_for(tok_env: &TokEnv, limits: &CompilerLimits) -> Factory {
    let mut factory = ParserFactory::new_simple(tok_env).map_err(|e| format!("{e:#}"))?;
    factory.quiet();
    *factory.limits_mut() = limits.parser.clone();
    Ok(factory)
}

impl Compiler {
    pub fn new(tok_env: TokEnv, limits: CompilerLimits) -> Result<Self, GuidedError> {
        let vocab = tok_env.tok_trie().vocab_size();
        let factory = factory_for(&tok_env, &limits).map_err(GuidedError::Tokenizer)?;
        Ok(Self::with_cell(
            Arc::new(OnceLock::from(Ok(factory))),
            vocab,
            limits,
        ))
    }

    /// A compiler whose token table `tok_env` builds on a thread of its own, so start-up
    /// does not wait for it; the first compile does (and fails, with the build's error,
    /// if the build did). `vocab` is the model's vocabulary the table is padded to.
    /// `on_ready` is told how the build went and how long it took.
    pub fn in_background(
        vocab: usize,
        limits: CompilerLimits,
        tok_env: impl FnOnce() -> Result<TokEnv, GuidedError> + Send + 'static,
        on_ready: impl FnOnce(Result<(), &str>, std::time::Duration) + Send + 'static,
    ) -> Self {
        let cell = Arc::new(OnceLock::new());
        let (out, parser_limits) = (Arc::clone(&cell), limits.clone());
        let spawned = std::thread::Builder::new()
            .name("guided-tok-env".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    tok_env()
                        .map_err(|e| e.to_string())
                        .and_then(|t| factory_for(&t, &parser_limits))
                }))
                .unwrap_or_else(|_| Err("building the token table panicked".into()));
                on_ready(
                    built.as_ref().map(|_| ()).map_err(String::as_str),
                    started.elapsed(),
                );
                let _ = out.set(built);
            });
        if let Err(e) = spawned {
            let _ = cell.set(Err(format!("cannot start the token-table thread: {e}")));
        }
        Self::with_cell(cell, vocab, limits)
    }

    fn with_cell(factory: Arc<OnceLock<Factory>>, vocab: usize, limits: CompilerLimits) -> Self {
        Self {
            factory,
            vocab,
            limits,
            cache: Mutex::new(Cache {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// The parser factory, waiting for the token table if it is still being built.
    fn factory(&self) -> Result<&ParserFactory, GuidedError> {
        self.factory
            .wait()
            .as_ref()
            .map_err(|e| GuidedError::Tokenizer(e.clone()))
    }

    /// Whether the token table is built (a compile will not wait for it).
    pub fn is_ready(&self) -> bool {
        self.factory.get().is_some()
    }

    /// Rows of the mask (the model's vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Compiles `kind`, or returns the cached grammar for the same content.
    pub fn compile(&self, kind: &ConstraintKind) -> Result<Arc<CompiledGrammar>, GuidedError> {
        if let Some(g) = self.lock().map.get(kind) {
            return Ok(Arc::clone(g));
        }
        let size = spec_bytes(kind);
        if size > self.limits.max_spec_bytes {
            return Err(GuidedError::Invalid(format!(
                "the constraint is {size} bytes; at most {} are accepted",
                self.limits.max_spec_bytes
            )));
        }
        let grammar = top_level(kind, self.limits.any_whitespace)?;
        let parser = self
            .factory()?
            .create_parser(grammar)
            .map_err(|e| GuidedError::Invalid(format!("{e:#}")))?;
        let compiled = Arc::new(CompiledGrammar {
            parser: Mutex::new(parser),
        });
        let mut cache = self.lock();
        if cache.map.len() >= self.limits.cache_entries.max(1) {
            if let Some(old) = cache.order.pop_front() {
                cache.map.remove(&old);
            }
        }
        if cache
            .map
            .insert(kind.clone(), Arc::clone(&compiled))
            .is_none()
        {
            cache.order.push_back(kind.clone());
        }
        Ok(compiled)
    }

    /// A matcher for one sequence.
    pub fn matcher(&self, spec: &StructuredSpec) -> Result<SeqMatcher, GuidedError> {
        let grammar = self.compile(&spec.kind)?;
        SeqMatcher::new(&grammar, spec.after_token, self.vocab_size())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache holds no invariant a panic elsewhere could break.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn spec_bytes(kind: &ConstraintKind) -> usize {
    match kind {
        ConstraintKind::JsonSchema(s) | ConstraintKind::Regex(s) | ConstraintKind::Lark(s) => {
            s.len()
        }
        ConstraintKind::JsonObject => 0,
        ConstraintKind::Choice(c) => c.iter().map(|s| s.len() + 1).sum(),
    }
}

/// llguidance's JSON layout options, as the `x-guidance` key of a schema.
pub(crate) fn json_layout(any_whitespace: bool) -> serde_json::Value {
    if any_whitespace {
        serde_json::json!({"whitespace_flexible": true})
    } else {
        serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
    }
}

/// `schema` with the layout options, unless it sets its own.
pub(crate) fn with_layout(
    mut schema: serde_json::Value,
    any_whitespace: bool,
) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance")
            .or_insert_with(|| json_layout(any_whitespace));
    }
    schema
}

fn top_level(kind: &ConstraintKind, any_whitespace: bool) -> Result<TopLevelGrammar, GuidedError> {
    let invalid = |m: String| Err(GuidedError::Invalid(m));
    Ok(match kind {
        ConstraintKind::JsonSchema(s) => match serde_json::from_str(s) {
            Ok(v) => TopLevelGrammar::from_json_schema(with_layout(v, any_whitespace)),
            Err(e) => return invalid(format!("the schema is not JSON: {e}")),
        },
        ConstraintKind::JsonObject => TopLevelGrammar::from_json_schema(with_layout(
            serde_json::json!({"type": "object"}),
            any_whitespace,
        )),
        ConstraintKind::Regex(r) => TopLevelGrammar::from_regex(r),
        ConstraintKind::Choice(choices) => {
            if choices.is_empty() {
                return invalid("the choice list is empty".into());
            }
            TopLevelGrammar::from_lark(choice_grammar(choices))
        }
        ConstraintKind::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
    })
}

/// `start: "a" | "b"`: Lark string literals take JSON's escapes.
fn choice_grammar(choices: &[String]) -> String {
    let alts: Vec<String> = choices
        .iter()
        .map(|c| serde_json::Value::String(c.clone()).to_string())
        .collect();
    format!("start: {}", alts.join(" | "))
}
