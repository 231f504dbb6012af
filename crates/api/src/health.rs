//! Liveness and readiness, for orchestrators: `/health` and `/health/live` fail (503) once
//! the process cannot serve again without a restart (the engine stopped, or a fault marked
//! fatal, e.g. a broken tensor-parallel group or a lost device); `/health/ready` also fails
//! while the server drains for shutdown, so traffic moves elsewhere before it exits.

use std::sync::Mutex;

use qwen3_engine::EngineHandle;

/// Faults that only a restart clears. Set by whoever detects one (device monitoring, the
/// runtime); read by the health routes.
#[derive(Debug, Default)]
pub struct Health {
    fatal: Mutex<Option<String>>,
}

impl Health {
    /// Marks the process as needing a restart; the first reason is kept.
    pub fn set_fatal(&self, reason: impl Into<String>) {
        let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            let reason = reason.into();
            tracing::error!("fatal: {reason}; /health now answers 503 (restart the process)");
            *f = Some(reason);
        }
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `Err(why)` unless the process can serve requests now or later without a restart.
    pub fn live(&self, engine: &EngineHandle) -> Result<(), String> {
        if let Some(reason) = self.fatal() {
            return Err(reason);
        }
        if !engine.is_alive() {
            return Err("the engine is not running".into());
        }
        Ok(())
    }

    /// `Err(why)` unless the process is live and takes new requests (model loaded, KV cache
    /// sized: the server listens only after both; and not draining for shutdown).
    pub fn ready(&self, engine: &EngineHandle) -> Result<(), String> {
        self.live(engine)?;
        if !engine.is_accepting() {
            return Err("the server is shutting down".into());
        }
        Ok(())
    }
}
