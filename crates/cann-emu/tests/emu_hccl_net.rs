//! Emulated HCCL across processes over loopback: this test runs itself a second time as
//! rank 1's process, which joins rank 0's group with the root info it is handed. Then a
//! rank 1 that dies after joining: rank 0's collective fails within HCCL_EXEC_TIMEOUT.
//! HcclSend / HcclRecv across the two processes: a matched pair (there and back), a pair
//! whose receive expects another data type (both sides refused), and a receive from a
//! dead rank (fails within HCCL_EXEC_TIMEOUT).
//! (`harness = false`: one process per role, and the environment set before any thread.)

use ascend_sys::types::*;
use cann_emu::harness::*;
use std::ffi::c_void;
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

/// One HcclSend (`send`) or HcclRecv of 4 elements of `dt` on `buf`, then a stream
/// synchronize: its status (0 when the pair completed).
fn p2p(
    cann: &ascend_sys::Cann,
    stream: aclrtStream,
    comm: HcclComm,
    send: bool,
    buf: *mut c_void,
    dt: HcclDataType,
    peer: u32,
) -> i32 {
    let (acl, h) = (&cann.acl, cann.hccl().unwrap());
    // SAFETY: a live communicator, a device buffer of at least 4 elements, a live stream.
    unsafe {
        let rc = if send {
            (h.HcclSend)(buf, 4, dt, peer, comm, stream)
        } else {
            (h.HcclRecv)(buf, 4, dt, peer, comm, stream)
        };
        assert_eq!(rc, HcclResult::HCCL_SUCCESS, "queued");
        (acl.aclrtSynchronizeStream)(stream)
    }
}

/// A device buffer holding `bytes`.
fn upload(s: &Session, bytes: &[u8]) -> *mut c_void {
    let buf = s.malloc(bytes.len()).unwrap();
    // SAFETY: `buf` holds `bytes.len()` bytes of device memory.
    let rc = unsafe {
        (s.cann.acl.aclrtMemcpy)(
            buf,
            bytes.len(),
            bytes.as_ptr().cast(),
            bytes.len(),
            aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
        )
    };
    assert_eq!(rc, 0);
    buf
}

fn join_group(s: &Session, root: &HcclRootInfo, rank: u32) -> HcclComm {
    let h = s.cann.hccl().unwrap();
    let mut comm = std::ptr::null_mut();
    // SAFETY: valid pointers; a root info from HcclGetRootInfo.
    let rc = unsafe { (h.HcclCommInitRootInfo)(2, root, rank, &mut comm) };
    assert_eq!(rc, HcclResult::HCCL_SUCCESS);
    comm
}

/// Rank 1's side of the point-to-point tests: "p2p" receives 4 floats from rank 0 and sends
/// them back doubled; "p2p-mismatch" receives 4 BF16 where rank 0 sends FP32 and must be
/// refused; "p2p-die" joins and exits.
fn p2p_child(role: &str, s: &Session, root: &HcclRootInfo) -> bool {
    let comm = join_group(s, root, 1);
    let buf = s.malloc(16).unwrap();
    match role {
        "p2p" => {
            if p2p(
                &s.cann,
                s.stream,
                comm,
                false,
                buf,
                HcclDataType::HCCL_DATA_TYPE_FP32,
                0,
            ) != 0
            {
                return false;
            }
            let got = from_f32(&s.download(buf, 16).unwrap());
            let twice: Vec<f32> = got.iter().map(|x| 2.0 * x).collect();
            let b2 = upload(s, &f32_bytes(&twice));
            p2p(
                &s.cann,
                s.stream,
                comm,
                true,
                b2,
                HcclDataType::HCCL_DATA_TYPE_FP32,
                0,
            ) == 0
        }
        "p2p-mismatch" => {
            p2p(
                &s.cann,
                s.stream,
                comm,
                false,
                buf,
                HcclDataType::HCCL_DATA_TYPE_BFP16,
                0,
            ) != 0
        }
        _ => std::process::exit(0),
    }
}

/// Rank 0's side, against a rank 1 of `role`.
fn p2p_parent(s: &Session, role: &str) -> (i32, Vec<f32>) {
    let h = s.cann.hccl().unwrap();
    let mut root = HcclRootInfo::default();
    // SAFETY: a valid out-pointer; device 0 is current.
    assert_eq!(
        unsafe { (h.HcclGetRootInfo)(&mut root) },
        HcclResult::HCCL_SUCCESS
    );
    let mut peer = spawn_rank_1(&root, role);
    let comm = join_group(s, &root, 0);
    let buf = upload(s, &f32_bytes(&[1.0, 2.0, 3.0, 4.0]));
    let fp32 = HcclDataType::HCCL_DATA_TYPE_FP32;
    let rc = match role {
        "p2p-die" => p2p(&s.cann, s.stream, comm, false, buf, fp32, 1),
        _ => match p2p(&s.cann, s.stream, comm, true, buf, fp32, 1) {
            0 => p2p(&s.cann, s.stream, comm, false, buf, fp32, 1),
            e => e,
        },
    };
    assert!(peer.wait().unwrap().success(), "rank 1 ({role}) failed");
    let out = from_f32(&s.download(buf, 16).unwrap());
    // SAFETY: live handles, freed once.
    unsafe {
        (s.cann.acl.aclrtFree)(buf);
        (h.HcclCommDestroy)(comm);
    }
    (rc, out)
}

/// Both ranks in this process (rank 1 on its own thread and device 1): rank 0 sends 4
/// FP32 and rank 1 receives 4 elements of `rank1_dt`; each rank's status.
fn p2p_in_process(s: &Session, rank1_dt: HcclDataType) -> (i32, i32) {
    let h = s.cann.hccl().unwrap();
    let mut root = HcclRootInfo::default();
    // SAFETY: a valid out-pointer; device 0 is current.
    assert_eq!(
        unsafe { (h.HcclGetRootInfo)(&mut root) },
        HcclResult::HCCL_SUCCESS
    );
    let rank1 = std::thread::spawn(move || {
        let cann = ascend_sys::Cann::load_from([lib_dir().unwrap()]).unwrap();
        let (acl, h) = (&cann.acl, cann.hccl().unwrap());
        let (mut stream, mut comm, mut buf) = (
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        // SAFETY: plain runtime/HCCL calls with valid out-pointers.
        unsafe {
            assert_eq!((acl.aclrtSetDevice)(1), 0);
            assert_eq!((acl.aclrtCreateStream)(&mut stream), 0);
            assert_eq!(
                (h.HcclCommInitRootInfo)(2, &root, 1, &mut comm),
                HcclResult::HCCL_SUCCESS
            );
            assert_eq!(
                (acl.aclrtMalloc)(
                    &mut buf,
                    16,
                    aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST
                ),
                0
            );
        }
        let rc = p2p(&cann, stream, comm, false, buf, rank1_dt, 0);
        // SAFETY: live handles, freed once.
        unsafe {
            (acl.aclrtFree)(buf);
            (h.HcclCommDestroy)(comm);
            (acl.aclrtDestroyStream)(stream);
        }
        rc
    });
    let comm = join_group(s, &root, 0);
    let buf = upload(s, &f32_bytes(&[1.0, 2.0, 3.0, 4.0]));
    let rc0 = p2p(
        &s.cann,
        s.stream,
        comm,
        true,
        buf,
        HcclDataType::HCCL_DATA_TYPE_FP32,
        1,
    );
    // SAFETY: live handles, freed once.
    unsafe {
        (s.cann.acl.aclrtFree)(buf);
        (h.HcclCommDestroy)(comm);
    }
    (rc0, rank1.join().unwrap())
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
    if role.starts_with("p2p") {
        return if p2p_child(role, &s, &root) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
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
    assert_eq!(
        p2p_in_process(&s, HcclDataType::HCCL_DATA_TYPE_FP32),
        (0, 0)
    );
    println!("test in_process_send_and_recv_pair_up ... ok");
    // Same byte count, another type: refused on both sides.
    let (rc0, rc1) = p2p_in_process(&s, HcclDataType::HCCL_DATA_TYPE_INT32);
    assert!(rc0 != 0 && rc1 != 0, "{rc0} {rc1}");
    println!("test in_process_send_and_recv_of_different_types_are_both_refused ... ok");
    let (rc, back) = p2p_parent(&s, "p2p");
    assert_eq!((rc, back), (0, vec![2.0, 4.0, 6.0, 8.0]));
    println!("test cross_process_send_and_recv_pair_up ... ok");
    let (rc, _) = p2p_parent(&s, "p2p-mismatch");
    assert_ne!(rc, 0, "a send of FP32 received as BF16 was accepted");
    println!("test a_send_and_recv_of_different_types_are_both_refused ... ok");
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
    let start = Instant::now();
    let (rc, _) = p2p_parent(&s, "p2p-die");
    assert_ne!(rc, 0);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    println!("test a_recv_from_a_dead_peer_fails_in_bounded_time ... ok");
    let st = s.finish().unwrap();
    // The refused pair in this process (2), the refused send, the dead all-reduce and the
    // dead receive.
    assert_eq!((st.leaks(), st.exec_errors), (0, 5), "{st:?}");
    ExitCode::SUCCESS
}
