//! `unsafe extern "C" fn` pointer types, one per C symbol, named exactly as the symbol.
//!
//! Written by hand from the public CANN headers and documentation (see the crate docs
//! for sources). `build.rs` (feature `bindgen`) scans this file for `pub type NAME =`
//! lines to know which symbols to compare with the headers, so keep one alias per symbol
//! and keep the `pub type NAME =` form.
//!
//! Every aclnn operator has two phases: `aclnnXxxGetWorkspaceSize(inputs.., outputs..,
//! uint64_t *workspaceSize, aclOpExecutor **executor)` and `aclnnXxx(workspace,
//! workspaceSize, executor, stream)`, whose type is [`AclnnRun`] for every operator.

#![allow(non_camel_case_types, non_snake_case)]

use crate::types::*;
use std::ffi::{c_char, c_int, c_void};

// ---------------------------------------------------------------------------------------
// ACL runtime (libascendcl.so): acl/acl_rt.h, acl/acl_base_rt.h
// ---------------------------------------------------------------------------------------

pub type aclInit = unsafe extern "C" fn(configPath: *const c_char) -> aclError;
pub type aclFinalize = unsafe extern "C" fn() -> aclError;
pub type aclGetRecentErrMsg = unsafe extern "C" fn() -> *const c_char;
pub type aclrtSetDevice = unsafe extern "C" fn(deviceId: i32) -> aclError;
pub type aclrtResetDevice = unsafe extern "C" fn(deviceId: i32) -> aclError;
pub type aclrtGetDevice = unsafe extern "C" fn(deviceId: *mut i32) -> aclError;
pub type aclrtGetDeviceCount = unsafe extern "C" fn(count: *mut u32) -> aclError;
pub type aclrtSynchronizeDevice = unsafe extern "C" fn() -> aclError;
pub type aclrtCreateContext =
    unsafe extern "C" fn(context: *mut aclrtContext, deviceId: i32) -> aclError;
pub type aclrtDestroyContext = unsafe extern "C" fn(context: aclrtContext) -> aclError;
pub type aclrtSetCurrentContext = unsafe extern "C" fn(context: aclrtContext) -> aclError;
pub type aclrtGetCurrentContext = unsafe extern "C" fn(context: *mut aclrtContext) -> aclError;
pub type aclrtCreateStream = unsafe extern "C" fn(stream: *mut aclrtStream) -> aclError;
pub type aclrtCreateStreamWithConfig =
    unsafe extern "C" fn(stream: *mut aclrtStream, priority: u32, flag: u32) -> aclError;
pub type aclrtDestroyStream = unsafe extern "C" fn(stream: aclrtStream) -> aclError;
pub type aclrtSynchronizeStream = unsafe extern "C" fn(stream: aclrtStream) -> aclError;
pub type aclrtSynchronizeStreamWithTimeout =
    unsafe extern "C" fn(stream: aclrtStream, timeout: i32) -> aclError;
pub type aclrtMalloc = unsafe extern "C" fn(
    devPtr: *mut *mut c_void,
    size: usize,
    policy: aclrtMemMallocPolicy,
) -> aclError;
pub type aclrtFree = unsafe extern "C" fn(devPtr: *mut c_void) -> aclError;
pub type aclrtMallocHost = unsafe extern "C" fn(hostPtr: *mut *mut c_void, size: usize) -> aclError;
pub type aclrtFreeHost = unsafe extern "C" fn(hostPtr: *mut c_void) -> aclError;
pub type aclrtMemcpy = unsafe extern "C" fn(
    dst: *mut c_void,
    destMax: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
) -> aclError;
pub type aclrtMemcpyAsync = unsafe extern "C" fn(
    dst: *mut c_void,
    destMax: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
    stream: aclrtStream,
) -> aclError;
pub type aclrtMemset = unsafe extern "C" fn(
    devPtr: *mut c_void,
    maxCount: usize,
    value: i32,
    count: usize,
) -> aclError;
pub type aclrtMemsetAsync = unsafe extern "C" fn(
    devPtr: *mut c_void,
    maxCount: usize,
    value: i32,
    count: usize,
    stream: aclrtStream,
) -> aclError;
pub type aclrtGetMemInfo =
    unsafe extern "C" fn(attr: aclrtMemAttr, free: *mut usize, total: *mut usize) -> aclError;
pub type aclrtCreateEvent = unsafe extern "C" fn(event: *mut aclrtEvent) -> aclError;
pub type aclrtCreateEventWithFlag =
    unsafe extern "C" fn(event: *mut aclrtEvent, flag: u32) -> aclError;
pub type aclrtDestroyEvent = unsafe extern "C" fn(event: aclrtEvent) -> aclError;
pub type aclrtRecordEvent =
    unsafe extern "C" fn(event: aclrtEvent, stream: aclrtStream) -> aclError;
pub type aclrtStreamWaitEvent =
    unsafe extern "C" fn(stream: aclrtStream, event: aclrtEvent) -> aclError;
pub type aclrtSynchronizeEvent = unsafe extern "C" fn(event: aclrtEvent) -> aclError;
pub type aclrtEventElapsedTime =
    unsafe extern "C" fn(ms: *mut f32, startEvent: aclrtEvent, endEvent: aclrtEvent) -> aclError;
pub type aclmdlRICaptureBegin =
    unsafe extern "C" fn(stream: aclrtStream, mode: aclmdlRICaptureMode) -> aclError;
pub type aclmdlRICaptureEnd =
    unsafe extern "C" fn(stream: aclrtStream, modelRI: *mut aclmdlRI) -> aclError;
pub type aclmdlRICaptureGetInfo = unsafe extern "C" fn(
    stream: aclrtStream,
    status: *mut aclmdlRICaptureStatus,
    modelRI: *mut aclmdlRI,
) -> aclError;
pub type aclmdlRIExecuteAsync =
    unsafe extern "C" fn(modelRI: aclmdlRI, stream: aclrtStream) -> aclError;
pub type aclmdlRIDestroy = unsafe extern "C" fn(modelRI: aclmdlRI) -> aclError;
pub type aclmdlRICaptureTaskGrpBegin = unsafe extern "C" fn(stream: aclrtStream) -> aclError;
pub type aclmdlRICaptureTaskGrpEnd =
    unsafe extern "C" fn(stream: aclrtStream, handle: *mut aclrtTaskGrp) -> aclError;
pub type aclmdlRICaptureTaskUpdateBegin =
    unsafe extern "C" fn(stream: aclrtStream, handle: aclrtTaskGrp) -> aclError;
pub type aclmdlRICaptureTaskUpdateEnd = unsafe extern "C" fn(stream: aclrtStream) -> aclError;
pub type aclrtGetVersion = unsafe extern "C" fn(
    majorVersion: *mut i32,
    minorVersion: *mut i32,
    patchVersion: *mut i32,
) -> aclError;
pub type aclsysGetCANNVersion =
    unsafe extern "C" fn(name: aclCANNPackageName, version: *mut aclCANNPackageVersion) -> aclError;
pub type aclrtGetSocName = unsafe extern "C" fn() -> *const c_char;

// ---------------------------------------------------------------------------------------
// nnopbase (libnnopbase.so): aclnn/acl_meta.h
// ---------------------------------------------------------------------------------------

pub type aclCreateTensor = unsafe extern "C" fn(
    viewDims: *const i64,
    viewDimsNum: u64,
    dataType: aclDataType,
    stride: *const i64,
    offset: i64,
    format: aclFormat,
    storageDims: *const i64,
    storageDimsNum: u64,
    tensorData: *mut c_void,
) -> *mut aclTensor;
pub type aclCreateScalar =
    unsafe extern "C" fn(value: *mut c_void, dataType: aclDataType) -> *mut aclScalar;
pub type aclCreateIntArray = unsafe extern "C" fn(value: *const i64, size: u64) -> *mut aclIntArray;
pub type aclCreateTensorList =
    unsafe extern "C" fn(value: *const *const aclTensor, size: u64) -> *mut aclTensorList;
pub type aclDestroyTensor = unsafe extern "C" fn(tensor: *const aclTensor) -> aclnnStatus;
pub type aclDestroyScalar = unsafe extern "C" fn(scalar: *const aclScalar) -> aclnnStatus;
pub type aclDestroyIntArray = unsafe extern "C" fn(array: *const aclIntArray) -> aclnnStatus;
pub type aclDestroyTensorList = unsafe extern "C" fn(array: *const aclTensorList) -> aclnnStatus;
pub type aclSetAclOpExecutorRepeatable =
    unsafe extern "C" fn(executor: *mut aclOpExecutor) -> aclnnStatus;
pub type aclDestroyAclOpExecutor =
    unsafe extern "C" fn(executor: *mut aclOpExecutor) -> aclnnStatus;
pub type aclSetInputTensorAddr = unsafe extern "C" fn(
    executor: *mut aclOpExecutor,
    index: usize,
    tensor: *mut aclTensor,
    addr: *mut c_void,
) -> aclnnStatus;
pub type aclSetOutputTensorAddr = unsafe extern "C" fn(
    executor: *mut aclOpExecutor,
    index: usize,
    tensor: *mut aclTensor,
    addr: *mut c_void,
) -> aclnnStatus;
pub type aclSetDynamicInputTensorAddr = unsafe extern "C" fn(
    executor: *mut aclOpExecutor,
    irIndex: usize,
    relativeIndex: usize,
    tensors: *mut aclTensorList,
    addr: *mut c_void,
) -> aclnnStatus;
pub type aclSetRawTensorAddr =
    unsafe extern "C" fn(tensor: *mut aclTensor, addr: *mut c_void) -> aclnnStatus;

// ---------------------------------------------------------------------------------------
// aclnn operators (libopapi*.so): aclnnop/aclnn_*.h
// ---------------------------------------------------------------------------------------

/// The second phase shared by every aclnn operator.
pub type AclnnRun = unsafe extern "C" fn(
    workspace: *mut c_void,
    workspaceSize: u64,
    executor: *mut aclOpExecutor,
    stream: aclrtStream,
) -> aclnnStatus;

/// Shorthands for the trailing out-parameters of every first phase.
type Ws = *mut u64;
type Ex = *mut *mut aclOpExecutor;
type T = *const aclTensor;
type TMut = *mut aclTensor;
type TL = *const aclTensorList;
type IA = *const aclIntArray;

// aclnn_matmul.h (ops-nn matmul/mat_mul_v3). cubeMathType: 0 KEEP_DTYPE, 1 ALLOW_FP32_DOWN_PRECISION,
// 2 USE_FP16, 3 USE_HF32.
pub type aclnnMatmulGetWorkspaceSize = unsafe extern "C" fn(
    self_: T,
    mat2: T,
    out: TMut,
    cubeMathType: i8,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnMatmul = AclnnRun;

// aclnn_rms_norm.h (generated from ops-nn norm/rms_norm; documented in aclnnRmsNorm.md).
pub type aclnnRmsNormGetWorkspaceSize = unsafe extern "C" fn(
    x: T,
    gamma: T,
    epsilon: f64,
    yOut: T,
    rstdOut: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnRmsNorm = AclnnRun;

// aclnn_add_rms_norm.h (ops-nn norm/add_rms_norm): y = rmsnorm(x1 + x2) * gamma, xOut = x1 + x2.
pub type aclnnAddRmsNormGetWorkspaceSize = unsafe extern "C" fn(
    x1: T,
    x2: T,
    gamma: T,
    epsilon: f64,
    yOut: TMut,
    rstdOut: TMut,
    xOut: TMut,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnAddRmsNorm = AclnnRun;

// aclnn_rotary_position_embedding.h (ops-transformer): mode 0 half, 1 interleave.
pub type aclnnRotaryPositionEmbeddingGetWorkspaceSize =
    unsafe extern "C" fn(x: T, cos: T, sin: T, mode: i64, out: TMut, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnRotaryPositionEmbedding = AclnnRun;

// aclnn_apply_rotary_pos_emb.h (ops-transformer): in place on query and key; layout 1 = BSND.
pub type aclnnApplyRotaryPosEmbGetWorkspaceSize = unsafe extern "C" fn(
    queryRef: TMut,
    keyRef: TMut,
    cos: T,
    sin: T,
    layout: i64,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnApplyRotaryPosEmb = AclnnRun;

// aclnn_swi_glu.h (generated from ops-nn activation/swi_glu): out = silu(a) * b, x split on dim.
pub type aclnnSwiGluGetWorkspaceSize =
    unsafe extern "C" fn(x: T, dim: i64, out: T, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnSwiGlu = AclnnRun;

// aclnn_embedding.h (ops-nn index/embedding).
pub type aclnnEmbeddingGetWorkspaceSize =
    unsafe extern "C" fn(weight: T, indices: T, out: T, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnEmbedding = AclnnRun;

// aclnn_scatter_pa_kv_cache.h (ops-transformer attention/scatter_pa_kv_cache), the 12-input
// form of CANN 8.3.RC1 and later (8.3.RC1 alpha builds had a 9-input form without
// scatterMode/strides/offsets). cacheMode "Norm" = cache [blocks, block_size, heads, dim].
pub type aclnnScatterPaKvCacheGetWorkspaceSize = unsafe extern "C" fn(
    key: T,
    keyCacheRef: TMut,
    slotMapping: T,
    value: T,
    valueCacheRef: TMut,
    compressLensOptional: T,
    compressSeqOffsetOptional: T,
    seqLensOptional: T,
    cacheModeOptional: *mut c_char,
    scatterModeOptional: *mut c_char,
    stridesOptional: IA,
    offsetsOptional: IA,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnScatterPaKvCache = AclnnRun;

// aclnn_scatter_nd_update.h (ops-nn index/scatter_nd_update): varRef[indices] = updates, the
// KV-cache write for libraries without ScatterPaKvCache.
pub type aclnnScatterNdUpdateGetWorkspaceSize =
    unsafe extern "C" fn(varRef: TMut, indices: T, updates: T, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnScatterNdUpdate = AclnnRun;

// aclnn_fused_infer_attention_score_v2.h (ops-transformer), CANN 8.0.RC2+.
pub type aclnnFusedInferAttentionScoreV2GetWorkspaceSize = unsafe extern "C" fn(
    query: T,
    key: TL,
    value: TL,
    pseShiftOptional: T,
    attenMaskOptional: T,
    actualSeqLengthsOptional: IA,
    actualSeqLengthsKvOptional: IA,
    deqScale1Optional: T,
    quantScale1Optional: T,
    deqScale2Optional: T,
    quantScale2Optional: T,
    quantOffset2Optional: T,
    antiquantScaleOptional: T,
    antiquantOffsetOptional: T,
    blockTableOptional: T,
    queryPaddingSizeOptional: T,
    kvPaddingSizeOptional: T,
    keyAntiquantScaleOptional: T,
    keyAntiquantOffsetOptional: T,
    valueAntiquantScaleOptional: T,
    valueAntiquantOffsetOptional: T,
    keySharedPrefixOptional: T,
    valueSharedPrefixOptional: T,
    actualSharedPrefixLenOptional: IA,
    numHeads: i64,
    scaleValue: f64,
    preTokens: i64,
    nextTokens: i64,
    inputLayout: *mut c_char,
    numKeyValueHeads: i64,
    sparseMode: i64,
    innerPrecise: i64,
    blockSize: i64,
    antiquantMode: i64,
    softmaxLseFlag: bool,
    keyAntiquantMode: i64,
    valueAntiquantMode: i64,
    attentionOut: T,
    softmaxLse: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnFusedInferAttentionScoreV2 = AclnnRun;

// aclnn_fused_infer_attention_score_v3.h, CANN 8.1.RC1+: V2 plus queryRope, keyRope,
// keyRopeAntiquantScale after actualSharedPrefixLen.
pub type aclnnFusedInferAttentionScoreV3GetWorkspaceSize = unsafe extern "C" fn(
    query: T,
    key: TL,
    value: TL,
    pseShiftOptional: T,
    attenMaskOptional: T,
    actualSeqLengthsOptional: IA,
    actualSeqLengthsKvOptional: IA,
    deqScale1Optional: T,
    quantScale1Optional: T,
    deqScale2Optional: T,
    quantScale2Optional: T,
    quantOffset2Optional: T,
    antiquantScaleOptional: T,
    antiquantOffsetOptional: T,
    blockTableOptional: T,
    queryPaddingSizeOptional: T,
    kvPaddingSizeOptional: T,
    keyAntiquantScaleOptional: T,
    keyAntiquantOffsetOptional: T,
    valueAntiquantScaleOptional: T,
    valueAntiquantOffsetOptional: T,
    keySharedPrefixOptional: T,
    valueSharedPrefixOptional: T,
    actualSharedPrefixLenOptional: IA,
    queryRopeOptional: T,
    keyRopeOptional: T,
    keyRopeAntiquantScaleOptional: T,
    numHeads: i64,
    scaleValue: f64,
    preTokens: i64,
    nextTokens: i64,
    inputLayout: *mut c_char,
    numKeyValueHeads: i64,
    sparseMode: i64,
    innerPrecise: i64,
    blockSize: i64,
    antiquantMode: i64,
    softmaxLseFlag: bool,
    keyAntiquantMode: i64,
    valueAntiquantMode: i64,
    attentionOut: T,
    softmaxLse: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnFusedInferAttentionScoreV3 = AclnnRun;

// aclnn_fused_infer_attention_score_v4.h, CANN 8.3.RC1+: V3 plus dequantScaleQuery and
// learnableSink (tensors) and queryQuantMode (after valueAntiquantMode). The 8.3.RC1
// alpha001 docs show V4 without learnableSink: gate V4 on the CANN version as well.
pub type aclnnFusedInferAttentionScoreV4GetWorkspaceSize = unsafe extern "C" fn(
    query: T,
    key: TL,
    value: TL,
    pseShiftOptional: T,
    attenMaskOptional: T,
    actualSeqLengthsOptional: IA,
    actualSeqLengthsKvOptional: IA,
    deqScale1Optional: T,
    quantScale1Optional: T,
    deqScale2Optional: T,
    quantScale2Optional: T,
    quantOffset2Optional: T,
    antiquantScaleOptional: T,
    antiquantOffsetOptional: T,
    blockTableOptional: T,
    queryPaddingSizeOptional: T,
    kvPaddingSizeOptional: T,
    keyAntiquantScaleOptional: T,
    keyAntiquantOffsetOptional: T,
    valueAntiquantScaleOptional: T,
    valueAntiquantOffsetOptional: T,
    keySharedPrefixOptional: T,
    valueSharedPrefixOptional: T,
    actualSharedPrefixLenOptional: IA,
    queryRopeOptional: T,
    keyRopeOptional: T,
    keyRopeAntiquantScaleOptional: T,
    dequantScaleQueryOptional: T,
    learnableSinkOptional: T,
    numHeads: i64,
    scaleValue: f64,
    preTokens: i64,
    nextTokens: i64,
    inputLayout: *mut c_char,
    numKeyValueHeads: i64,
    sparseMode: i64,
    innerPrecise: i64,
    blockSize: i64,
    antiquantMode: i64,
    softmaxLseFlag: bool,
    keyAntiquantMode: i64,
    valueAntiquantMode: i64,
    queryQuantMode: i64,
    attentionOut: T,
    softmaxLse: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnFusedInferAttentionScoreV4 = AclnnRun;

// aclnn_incre_flash_attention_v4.h (decode), CANN 8.0.RC1+.
pub type aclnnIncreFlashAttentionV4GetWorkspaceSize = unsafe extern "C" fn(
    query: T,
    key: TL,
    value: TL,
    pseShift: T,
    attenMask: T,
    actualSeqLengths: IA,
    dequantScale1: T,
    quantScale1: T,
    dequantScale2: T,
    quantScale2: T,
    quantOffset2: T,
    antiquantScale: T,
    antiquantOffset: T,
    blocktable: T,
    kvPaddingSize: T,
    numHeads: i64,
    scaleValue: f64,
    inputLayout: *mut c_char,
    numKeyValueHeads: i64,
    blockSize: i64,
    innerPrecise: i64,
    attentionOut: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnIncreFlashAttentionV4 = AclnnRun;

// aclnn_prompt_flash_attention_v3.h (prefill): key/value are tensors, not lists.
pub type aclnnPromptFlashAttentionV3GetWorkspaceSize = unsafe extern "C" fn(
    query: T,
    key: T,
    value: T,
    pseShift: T,
    attenMask: T,
    actualSeqLengths: IA,
    actualSeqLengthsKv: IA,
    deqScale1: T,
    quantScale1: T,
    deqScale2: T,
    quantScale2: T,
    quantOffset2: T,
    numHeads: i64,
    scaleValue: f64,
    preTokens: i64,
    nextTokens: i64,
    inputLayout: *mut c_char,
    numKeyValueHeads: i64,
    sparseMode: i64,
    innerPrecise: i64,
    attentionOut: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnPromptFlashAttentionV3 = AclnnRun;

// aclnn_argmax.h (ops-math math/arg_max_v2).
pub type aclnnArgMaxGetWorkspaceSize = unsafe extern "C" fn(
    self_: T,
    dim: i64,
    keepdim: bool,
    out: TMut,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnArgMax = AclnnRun;

// aclnn_topk.h.
pub type aclnnTopkGetWorkspaceSize = unsafe extern "C" fn(
    self_: T,
    k: i64,
    dim: i64,
    largest: bool,
    sorted: bool,
    valuesOut: TMut,
    indicesOut: TMut,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnTopk = AclnnRun;

// aclnn_softmax.h (ops-nn activation/softmax_v2).
pub type aclnnSoftmaxGetWorkspaceSize =
    unsafe extern "C" fn(self_: T, dim: i64, out: TMut, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnSoftmax = AclnnRun;

// aclnn_logsoftmax.h (ops-nn activation/log_softmax_v2, docs/aclnnLogSoftmax.md).
pub type aclnnLogSoftmaxGetWorkspaceSize =
    unsafe extern "C" fn(self_: T, dim: i64, out: TMut, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnLogSoftmax = AclnnRun;

// aclnn_gt_tensor.h (ops-math math/greater, docs/aclnnGtTensor&aclnnInplaceGtTensor.md).
pub type aclnnGtTensorGetWorkspaceSize =
    unsafe extern "C" fn(self_: T, other: T, out: TMut, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnGtTensor = AclnnRun;

// aclnn_bitwise_and_tensor.h (ops-math math/bitwise_and, docs/aclnnBitwiseAndTensor.md):
// out = self & other, element-wise over broadcast shapes.
pub type aclnnBitwiseAndTensorGetWorkspaceSize =
    unsafe extern "C" fn(self_: T, other: T, out: TMut, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnBitwiseAndTensor = AclnnRun;

// aclnn_eq_scalar.h (ops-math math/equal, docs/aclnnEqScalar&aclnnInplaceEqScalar.md):
// out = (self == other).
pub type aclnnEqScalarGetWorkspaceSize = unsafe extern "C" fn(
    self_: T,
    other: *const aclScalar,
    out: TMut,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnEqScalar = AclnnRun;

// aclnn_masked_fill_scalar.h (ops-math conversion/masked_fill,
// docs/aclnnInplaceMaskedFillScalar.md): selfRef[i] = value where mask[i].
pub type aclnnInplaceMaskedFillScalarGetWorkspaceSize = unsafe extern "C" fn(
    selfRef: TMut,
    mask: T,
    value: *const aclScalar,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnInplaceMaskedFillScalar = AclnnRun;

// aclnn_cast.h (ops-math math/cast).
pub type aclnnCastGetWorkspaceSize =
    unsafe extern "C" fn(self_: T, dtype: aclDataType, out: TMut, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnCast = AclnnRun;

// aclnn_moe_gating_top_k_softmax.h (generated; documented in aclnnMoeGatingTopKSoftmax.md).
pub type aclnnMoeGatingTopKSoftmaxGetWorkspaceSize = unsafe extern "C" fn(
    x: T,
    finishedOptional: T,
    k: i64,
    yOut: T,
    expertIdxOut: T,
    rowIdxOut: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnMoeGatingTopKSoftmax = AclnnRun;

// aclnn_moe_init_routing_v2.h (ops-transformer moe/moe_init_routing_v2).
pub type aclnnMoeInitRoutingV2GetWorkspaceSize = unsafe extern "C" fn(
    x: T,
    expertIdx: T,
    activeNum: i64,
    expertCapacity: i64,
    expertNum: i64,
    dropPadMode: i64,
    expertTokensCountOrCumsumFlag: i64,
    expertTokensBeforeCapacityFlag: bool,
    expandedXOut: T,
    expandedRowIdxOut: T,
    expertTokensCountOrCumsumOut: T,
    expertTokensBeforeCapacityOut: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnMoeInitRoutingV2 = AclnnRun;

// aclnn_grouped_matmul_v4.h (ops-transformer gmm/grouped_matmul).
pub type aclnnGroupedMatmulV4GetWorkspaceSize = unsafe extern "C" fn(
    x: TL,
    weight: TL,
    biasOptional: TL,
    scaleOptional: TL,
    offsetOptional: TL,
    antiquantScaleOptional: TL,
    antiquantOffsetOptional: TL,
    perTokenScaleOptional: TL,
    groupListOptional: T,
    activationInputOptional: TL,
    activationQuantScaleOptional: TL,
    activationQuantOffsetOptional: TL,
    splitItem: i64,
    groupType: i64,
    groupListType: i64,
    actType: i64,
    out: *mut aclTensorList,
    activationFeatureOutOptional: *mut aclTensorList,
    dynQuantScaleOutOptional: *mut aclTensorList,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnGroupedMatmulV4 = AclnnRun;

// aclnn_moe_finalize_routing_v2.h (ops-transformer moe/moe_finalize_routing_v2).
pub type aclnnMoeFinalizeRoutingV2GetWorkspaceSize = unsafe extern "C" fn(
    expandedX: T,
    expandedRowIdx: T,
    x1Optional: T,
    x2Optional: T,
    biasOptional: T,
    scalesOptional: T,
    expertIdxOptional: T,
    dropPadMode: i64,
    out: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnMoeFinalizeRoutingV2 = AclnnRun;

// aclnn_weight_quant_batch_matmul_v2.h (ops-nn): W4A16/W8A16, y = x @ ((w + offset) * scale).
pub type aclnnWeightQuantBatchMatmulV2GetWorkspaceSize = unsafe extern "C" fn(
    x: T,
    weight: T,
    antiquantScale: T,
    antiquantOffsetOptional: T,
    quantScaleOptional: T,
    quantOffsetOptional: T,
    biasOptional: T,
    antiquantGroupSize: c_int,
    y: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnWeightQuantBatchMatmulV2 = AclnnRun;

// aclnn_add.h (ops-math math/add): out = self + alpha * other.
pub type aclnnAddGetWorkspaceSize = unsafe extern "C" fn(
    self_: T,
    other: T,
    alpha: *const aclScalar,
    out: TMut,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnAdd = AclnnRun;
pub type aclnnInplaceAddGetWorkspaceSize = unsafe extern "C" fn(
    selfRef: T,
    other: T,
    alpha: *const aclScalar,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnInplaceAdd = AclnnRun;

// aclnn_reduce_sum.h (ops-math math/reduce_sum_op): out = self summed over `dims`, in
// `dtype`, which must equal out's dtype.
pub type aclnnReduceSumGetWorkspaceSize = unsafe extern "C" fn(
    self_: T,
    dims: IA,
    keepDims: bool,
    dtype: aclDataType,
    out: TMut,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnReduceSum = AclnnRun;

// W8A8 (ops-nn quant/dynamic_quant, quant/ascend_quant_v2, matmul/quant_batch_matmul_v3 docs):
// per-token dynamic INT8 quantization, per-tensor/channel quantization, INT8 x INT8 matmul.
pub type aclnnDynamicQuantGetWorkspaceSize = unsafe extern "C" fn(
    x: T,
    smoothScalesOptional: T,
    yOut: T,
    scaleOut: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnDynamicQuant = AclnnRun;
pub type aclnnAscendQuantV3GetWorkspaceSize = unsafe extern "C" fn(
    x: T,
    scale: T,
    offset: T,
    sqrtMode: bool,
    roundMode: *const std::ffi::c_char,
    dstType: i32,
    axis: i32,
    y: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnAscendQuantV3 = AclnnRun;
pub type aclnnQuantMatmulV4GetWorkspaceSize = unsafe extern "C" fn(
    x1: T,
    x2: T,
    scale: T,
    offset: T,
    pertokenScaleOptional: T,
    bias: T,
    transposeX1: bool,
    transposeX2: bool,
    out: T,
    ws: Ws,
    ex: Ex,
) -> aclnnStatus;
pub type aclnnQuantMatmulV4 = AclnnRun;

// aclnn_mul.h (ops-math math/mul).
pub type aclnnMulGetWorkspaceSize =
    unsafe extern "C" fn(self_: T, other: T, out: TMut, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnMul = AclnnRun;

// aclnn_index_select.h (ops-nn index/gather_v2): out = self.index_select(dim, index).
pub type aclnnIndexSelectGetWorkspaceSize =
    unsafe extern "C" fn(self_: T, dim: i64, index: T, out: TMut, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnIndexSelect = AclnnRun;

// aclnn_gather.h (ops-nn index/gather_elements_v2): torch.gather semantics.
pub type aclnnGatherGetWorkspaceSize =
    unsafe extern "C" fn(self_: T, dim: i64, index: T, out: TMut, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnGather = AclnnRun;

// aclnn_copy.h (ops-math conversion/view_copy): selfRef.copy_(src), strided and casting.
pub type aclnnInplaceCopyGetWorkspaceSize =
    unsafe extern "C" fn(selfRef: TMut, src: T, ws: Ws, ex: Ex) -> aclnnStatus;
pub type aclnnInplaceCopy = AclnnRun;

// ---------------------------------------------------------------------------------------
// HCCL (libhccl.so): hccl/hccl.h, hccl/hccl_types.h
// ---------------------------------------------------------------------------------------

pub type HcclGetRootInfo = unsafe extern "C" fn(rootInfo: *mut HcclRootInfo) -> HcclResult;
pub type HcclCommInitRootInfo = unsafe extern "C" fn(
    nRanks: u32,
    rootInfo: *const HcclRootInfo,
    rank: u32,
    comm: *mut HcclComm,
) -> HcclResult;
pub type HcclCommInitAll =
    unsafe extern "C" fn(ndev: u32, devices: *mut i32, comms: *mut HcclComm) -> HcclResult;
pub type HcclAllReduce = unsafe extern "C" fn(
    sendBuf: *mut c_void,
    recvBuf: *mut c_void,
    count: u64,
    dataType: HcclDataType,
    op: HcclReduceOp,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult;
pub type HcclAllGather = unsafe extern "C" fn(
    sendBuf: *mut c_void,
    recvBuf: *mut c_void,
    sendCount: u64,
    dataType: HcclDataType,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult;
pub type HcclReduceScatter = unsafe extern "C" fn(
    sendBuf: *mut c_void,
    recvBuf: *mut c_void,
    recvCount: u64,
    dataType: HcclDataType,
    op: HcclReduceOp,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult;
pub type HcclBroadcast = unsafe extern "C" fn(
    buf: *mut c_void,
    count: u64,
    dataType: HcclDataType,
    root: u32,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult;
pub type HcclSend = unsafe extern "C" fn(
    sendBuf: *mut c_void,
    count: u64,
    dataType: HcclDataType,
    destRank: u32,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult;
pub type HcclRecv = unsafe extern "C" fn(
    recvBuf: *mut c_void,
    count: u64,
    dataType: HcclDataType,
    srcRank: u32,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult;
pub type HcclBarrier = unsafe extern "C" fn(comm: HcclComm, stream: aclrtStream) -> HcclResult;
pub type HcclCommDestroy = unsafe extern "C" fn(comm: HcclComm) -> HcclResult;
pub type HcclGetRankSize = unsafe extern "C" fn(comm: HcclComm, rankSize: *mut u32) -> HcclResult;
pub type HcclGetRankId = unsafe extern "C" fn(comm: HcclComm, rank: *mut u32) -> HcclResult;
pub type HcclGetErrorString = unsafe extern "C" fn(code: HcclResult) -> *const c_char;

// qwen3-serve's own AscendC kernels (kernels/ascendc), through the launch stubs CANN's
// `ascendc_library` generates for them (`aclrtlaunch_<kernel>.h`: block dim, stream, then the
// kernel's global-memory arguments in order, the tiling last; 0 on success). Not in CANN's
// headers: the header check skips them.
pub type aclrtlaunch_qk_norm_rope_cache = unsafe extern "C" fn(
    blockDim: u32,
    stream: aclrtStream,
    q: *mut c_void,
    k: *mut c_void,
    v: *mut c_void,
    qWeight: *mut c_void,
    kWeight: *mut c_void,
    cos: *mut c_void,
    sin: *mut c_void,
    positions: *mut c_void,
    slotMapping: *mut c_void,
    qOut: *mut c_void,
    kCache: *mut c_void,
    vCache: *mut c_void,
    tiling: *mut c_void,
) -> u32;
pub type aclrtlaunch_paged_decode_attention = unsafe extern "C" fn(
    blockDim: u32,
    stream: aclrtStream,
    q: *mut c_void,
    kCache: *mut c_void,
    vCache: *mut c_void,
    blockTable: *mut c_void,
    contextLens: *mut c_void,
    out: *mut c_void,
    partialOut: *mut c_void,
    partialStats: *mut c_void,
    tiling: *mut c_void,
) -> u32;
pub type aclrtlaunch_paged_decode_merge = unsafe extern "C" fn(
    blockDim: u32,
    stream: aclrtStream,
    partialOut: *mut c_void,
    partialStats: *mut c_void,
    out: *mut c_void,
    tiling: *mut c_void,
) -> u32;
pub type aclrtlaunch_chunked_prefill_attention = unsafe extern "C" fn(
    blockDim: u32,
    stream: aclrtStream,
    q: *mut c_void,
    kCache: *mut c_void,
    vCache: *mut c_void,
    blockTable: *mut c_void,
    queryStart: *mut c_void,
    contextLens: *mut c_void,
    out: *mut c_void,
    tiling: *mut c_void,
) -> u32;
