//! The AscendC sim refuses kernels that break what a 910B enforces, and runs the same kernel
//! once it keeps the rule (each case in kernels/sim/rule_kernels.cpp, sources in
//! kernels/README.md).

use qwen3_kernels::{rule_case, KernelError, Rule};

/// Breaking `rule` is refused with a message containing `says`; keeping it runs.
fn refused(rule: Rule, says: &str) {
    rule_case(rule, true, 1).unwrap_or_else(|e| panic!("{rule:?} kept, yet refused: {e}"));
    match rule_case(rule, false, 1) {
        Err(KernelError::Refused(m)) => {
            assert!(m.contains(says), "{rule:?}: message {m:?} lacks {says:?}")
        }
        other => panic!("{rule:?} broken, yet not refused: {other:?}"),
    }
}

#[test]
fn oversubscribing_the_unified_buffer_is_refused() {
    refused(Rule::UbCapacity, "past its 196608 bytes");
}

#[test]
fn oversubscribing_l1_and_l0_is_refused() {
    refused(Rule::L1Capacity, "L1 up to byte 524320");
    refused(Rule::L0aCapacity, "L0A up to byte 65568");
    refused(Rule::L0bCapacity, "L0B up to byte 65568");
    refused(Rule::L0cCapacity, "L0C up to byte 131104");
}

#[test]
fn copies_of_partial_32_byte_blocks_are_refused() {
    refused(Rule::CopyLength, "60 bytes is not a multiple of 32");
}

#[test]
fn misaligned_vector_operands_are_refused() {
    refused(Rule::OperandAlign, "not 32-byte aligned");
}

#[test]
fn freeing_what_was_never_allocated_is_refused() {
    refused(Rule::FreeNeverAllocated, "does not belong to this queue");
    refused(Rule::DoubleFree, "freed twice");
}

#[test]
fn queue_depth_and_buffer_counts_are_enforced() {
    refused(Rule::EnqueOverDepth, "queue of depth 1 is full");
    refused(Rule::DequeEmpty, "queue is empty");
    refused(Rule::AllocAllInUse, "all 2 buffers");
    refused(Rule::LiveAllocLimit, "9th tensor");
}

#[test]
fn tensors_used_after_free_or_while_enqueued_are_refused() {
    refused(Rule::UseAfterFree, "used after FreeTensor");
    refused(Rule::EnqueuedUse, "used while enqueued");
}

#[test]
fn cross_pipe_reads_need_synchronisation() {
    refused(Rule::UnsyncedRead, "pipe MTE2 (copy in) wrote");
    refused(Rule::WaitWithoutSet, "WaitFlag with no SetFlag");
}

#[test]
fn global_accesses_stay_in_their_buffer() {
    refused(Rule::GlobalBounds, "out-of-bounds global access");
}

#[test]
fn block_dim_is_a_count_of_logical_cores() {
    for bad in [0, 65_536] {
        match rule_case(Rule::CopyLength, true, bad) {
            Err(KernelError::Refused(m)) => assert!(m.contains("outside [1, 65535]"), "{m}"),
            other => panic!("block dim {bad} ran: {other:?}"),
        }
    }
    // Every block index runs: a violation in any block is reported with its index.
    match rule_case(Rule::DoubleFree, false, 3) {
        Err(KernelError::Refused(m)) => assert!(m.starts_with("block 0:"), "{m}"),
        other => panic!("{other:?}"),
    }
    rule_case(Rule::DoubleFree, true, 48).unwrap();
}
