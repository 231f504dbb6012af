//! Emulated HCCL across processes over loopback: this test runs itself a second time as
//! rank 1's process, which joins rank 0's group with the root info it is handed. Then a
//! rank 1 that dies after joining: rank 0's collective fails within HCCL_EXEC_TIMEOUT.
//! (`harness = false`: one process per role, and the environment set before any thread.)

use ascend_sys::types::*;
use cann_emu::harness::*;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

const ROOT_ENV: &str = "CANN_EMU_TEST_ROOT_INFO";
const ROLE_ENV: &str = "CANN_EMU_TEST_ROLE";

fn to_hex(root: &HcclRootInfo) -> String {
    root.internal
        .iter()
        .map(|&c| format!("{:02x}", c as u8))
        .collect()
}

fn from_hex(s: &str) -> HcclRootInfo {
    let mut root = HcclRootInfo::default();
    for (d, i) in root.internal.iter_mut().zip((0..s.len()).step_by(2)) {
        *d = u8::from_str_radix(&s[i..i + 2], 16).unwrap() as std::ffi::c_char;
    }
    root
}

/// Joins the group as `rank` on this process's device 1 and all-reduces `mine`
/// (`None`: joins, then exits without taking part). Returns the reduced values.
fn rank(
    s: &Session,
    root: &HcclRootInfo,
    rank: u32,
    mine: Option<[f32; 4]>,
) -> Result<Vec<f32>, i32> {
    let (acl, h) = (&s.cann.acl, s.cann.hccl().unwrap());
    let mut comm = std::ptr::null_mut();
    // SAFETY: valid pointers; a root info from HcclGetRootInfo.
    let rc = unsafe { (h.HcclCommInitRootInfo)(2, root, rank, &mut comm) };
    if rc != HcclResult::HCCL_SUCCESS {
        return Err(rc.0 as i32);
    }
    let Some(mine) = mine else {
        std::process::exit(0);
    };
    let buf = s.malloc(16).unwrap();
    let bytes = f32_bytes(&mine);
    // SAFETY: a 16-byte device buffer; the session's stream.
    let rc = unsafe {
        (acl.aclrtMemcpy)(
            buf,
            16,
            bytes.as_ptr().cast(),
            16,
            aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
        );
        let st = (h.HcclAllReduce)(
            buf,
            buf,
            4,
            HcclDataType::HCCL_DATA_TYPE_FP32,
            HcclReduceOp::HCCL_REDUCE_SUM,
            comm,
            s.stream,
        );
        assert_eq!(st, HcclResult::HCCL_SUCCESS);
        (acl.aclrtSynchronizeStream)(s.stream)
    };
    let out = if rc == 0 {
        Ok(from_f32(&s.download(buf, 16).unwrap()))
    } else {
        Err(rc)
    };
    // SAFETY: live handles, freed once.
    unsafe {
        (acl.aclrtFree)(buf);
        (h.HcclCommDestroy)(comm);
    }
    out
}

fn spawn_rank_1(root: &HcclRootInfo, role: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROOT_ENV, to_hex(root))
        .env(ROLE_ENV, role)
        .spawn()
        .unwrap()
}

fn child(role: &str) -> ExitCode {
    let s = Session::new().unwrap();
    let root = from_hex(&std::env::var(ROOT_ENV).unwrap());
    let mine = (role == "sum").then_some([10.0, 20.0, 30.0, 40.0]);
    match rank(&s, &root, 1, mine) {
        Ok(v) if v == [11.0, 22.0, 33.0, 44.0] => ExitCode::SUCCESS,
        other => {
            eprintln!("rank 1: {other:?}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        return child(&role);
    }
    let s = Session::new().unwrap();
    let h = s.cann.hccl().unwrap().clone();
    let mut root = HcclRootInfo::default();
    // SAFETY: a valid out-pointer; device 0 is current (the session set it).
    assert_eq!(
        unsafe { (h.HcclGetRootInfo)(&mut root) },
        HcclResult::HCCL_SUCCESS
    );

    // Two processes, one group: both see the sum.
    let mut peer = spawn_rank_1(&root, "sum");
    let sum = rank(&s, &root, 0, Some([1.0, 2.0, 3.0, 4.0]));
    assert!(peer.wait().unwrap().success(), "rank 1's process failed");
    assert_eq!(sum, Ok(vec![11.0, 22.0, 33.0, 44.0]));
    println!("test cross_process_all_reduce ... ok");

    // Rank 1's process joins, then dies: rank 0's all-reduce fails within HCCL_EXEC_TIMEOUT.
    // SAFETY (set_var): no other thread of this process reads the environment now.
    std::env::set_var("HCCL_EXEC_TIMEOUT", "2");
    // SAFETY: as above.
    assert_eq!(
        unsafe { (h.HcclGetRootInfo)(&mut root) },
        HcclResult::HCCL_SUCCESS
    );
    let mut peer = spawn_rank_1(&root, "die");
    let start = Instant::now();
    let dead = rank(&s, &root, 0, Some([1.0; 4]));
    assert!(dead.is_err(), "{dead:?}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert!(peer.wait().unwrap().success());
    println!("test a_dead_peer_fails_the_collective_in_bounded_time ... ok");
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.exec_errors), (0, 1), "{st:?}");
    ExitCode::SUCCESS
}
