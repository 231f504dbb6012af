//! Structured-output masks applied on the device: each masked row's packed bitmask
//! (llguidance's layout, bit `t % 32` of word `t / 32` allows token `t`) goes up through the
//! staging ring, is expanded there against a per-position bit pattern and the logits it
//! does not allow become -inf, so the row is then sampled on the device like any other
//! (no vocabulary-sized row crosses to the host).
//!
//! Three aclnn ops: `words[n, W, 1] & bits[1, 1, 32]` (BitwiseAndTensor) gives each
//! token's bit in place; `== 0` (EqScalar) turns it into "not allowed"; that BOOL buffer,
//! seen as `[n, vocab]` (contiguous when `vocab = 32 W`, as MaskedFill wants its mask), sets
//! the logits to -inf (InplaceMaskedFillScalar).

use ascend_sys::fns::{self, AclnnRun};
use qwen3_backend::Result;

use crate::desc::{Dt, ScalarDesc, View};
use crate::AscendBackend;

/// The three operators, when this CANN has them (all documented since 8.0.0).
#[derive(Clone, Copy)]
pub(crate) struct MaskOps {
    and: (fns::aclnnBitwiseAndTensorGetWorkspaceSize, AclnnRun),
    eq: (fns::aclnnEqScalarGetWorkspaceSize, AclnnRun),
    fill: (fns::aclnnInplaceMaskedFillScalarGetWorkspaceSize, AclnnRun),
}

impl AscendBackend {
    /// The mask operators, or None (masked rows then go to the host whole). The expansion
    /// needs a vocabulary of whole words (Qwen3's 151,936 is 4,748 of them).
    pub(crate) fn mask_ops(&self, vocab: usize) -> Option<MaskOps> {
        if vocab == 0 || !vocab.is_multiple_of(32) {
            return None;
        }
        let o = &self.cann_ref().ops;
        Some(MaskOps {
            and: o
                .aclnnBitwiseAndTensorGetWorkspaceSize
                .zip(o.aclnnBitwiseAndTensor)?,
            eq: o.aclnnEqScalarGetWorkspaceSize.zip(o.aclnnEqScalar)?,
            fill: o
                .aclnnInplaceMaskedFillScalarGetWorkspaceSize
                .zip(o.aclnnInplaceMaskedFillScalar)?,
        })
    }

    /// Sets to -inf every logit of `logits` (F32, contiguous `[n, vocab]`) that row `r`'s
    /// mask `masks[r]` does not allow (ids past the mask's end included); a row whose mask
    /// is None is left whole.
    pub(crate) fn apply_masks_on_device(
        &self,
        ops: MaskOps,
        logits: &View,
        masks: &[Option<&[u32]>],
    ) -> Result<()> {
        let (n, vocab) = (masks.len(), logits.shape[1] as usize);
        let w = vocab / 32;
        let mut words: Vec<i32> = Vec::with_capacity(n * w);
        for m in masks {
            match m {
                Some(m) => words.extend((0..w).map(|i| m.get(i).copied().unwrap_or(0) as i32)),
                None => words.extend(std::iter::repeat_n(-1i32, w)),
            }
        }
        let bits: Vec<i32> = (0..32).map(|b| (1u32 << b) as i32).collect();
        let words = self.upload_i32(&words, &[n, w, 1])?;
        let bits = self.upload_i32(&bits, &[1, 1, 32])?;
        let and = self.empty(Dt::I32, &[n, w, 32])?;
        let off = self.empty(Dt::Bool, &[n, w, 32])?;
        let c = self.cann_ref();
        {
            let (a, b, o) = (
                self.td(&words.view())?,
                self.td(&bits.view())?,
                self.td(&and.view())?,
            );
            aclnn!(&self.dev, "aclnnBitwiseAndTensor", ops.and.0, ops.and.1;
                a.raw, b.raw, o.raw)?;
        }
        {
            let zero = ScalarDesc::i32(c, 0)?;
            let (a, o) = (self.td(&and.view())?, self.td(&off.view())?);
            aclnn!(&self.dev, "aclnnEqScalar", ops.eq.0, ops.eq.1;
                a.raw, zero.raw, o.raw)?;
        }
        let ninf = ScalarDesc::f32(c, f32::NEG_INFINITY)?;
        let x = self.td(logits)?;
        let m = self.td(&View::contiguous(off.buf.ptr, Dt::Bool, &[n, vocab]))?;
        aclnn!(&self.dev, "aclnnInplaceMaskedFillScalar", ops.fill.0, ops.fill.1;
            x.raw, m.raw, ninf.raw)
    }
}
