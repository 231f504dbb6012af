//! Raw FFI to CANN (ACL runtime, nnopbase, aclnn operators, HCCL), resolved at run time.
