//! The `aclnn!` macro: every aclnn operator call, both phases, through [`crate::desc::launch`].
//! Declared first in `lib.rs` (`#[macro_use]`), so every module may use it.

/// Calls an aclnn operator through [`launch`]: `$ws` is the first phase, `$run` the second.
macro_rules! aclnn {
    ($dev:expr, $name:literal, $ws:expr, $run:expr; $($arg:expr),* $(,)?) => {{
        let f = $ws;
        $crate::desc::launch(
            $dev,
            $name,
            Box::new(move |w, e| {
                // SAFETY: every descriptor argument is alive for this call (owned by the
                // caller's frame) and the function type is the operator's documented one.
                unsafe { f($($arg),*, w, e) }
            }),
            $run,
        )
    }};
}
