//! Hub downloads against loopback fakes of Hugging Face (hub + CDN) and ModelScope (API + OSS):
//! byte-identical results, resuming with `Range`, clear errors, credentials only to the hub.

mod hub_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hub_support::{env, fixtures, read_dir_files, read_tree, FakeHf, FakeModelScope, FakeRepo};
use qwen3_hub as hub;
use qwen3_hub::{download_model_with_env, HubOptions};

const TINY: &str = "Qwen/Tiny-Qwen3";
const MOE: &str = "Qwen/Tiny-Qwen3-MoE";
const BIG: &str = "model.safetensors";
const CUT: usize = 1_000_003;

fn hf_opts(fake: &FakeHf, dir: &Path) -> HubOptions {
    HubOptions {
        download_dir: Some(dir.to_path_buf()),
        use_modelscope: false,
        revision: None,
        endpoint_override: Some(fake.hub.base.clone()),
    }
}

fn ms_opts(fake: &FakeModelScope, dir: &Path) -> HubOptions {
    HubOptions {
        download_dir: Some(dir.to_path_buf()),
        use_modelscope: true,
        revision: None,
        endpoint_override: Some(fake.hub.base.clone()),
    }
}

fn fixture(name: &str) -> HashMap<String, Vec<u8>> {
    read_dir_files(&fixtures().join(name))
}

fn assert_same_files(got: &Path, fixture_name: &str) {
    let got_files = read_tree(got);
    let want = fixture(fixture_name);
    let mut got_names: Vec<_> = got_files.keys().cloned().collect();
    let mut want_names: Vec<_> = want.keys().cloned().collect();
    got_names.sort();
    want_names.sort();
    assert_eq!(got_names, want_names, "files in {}", got.display());
    for (name, data) in &want {
        assert!(got_files[name] == *data, "{name} differs from the fixture");
    }
}

fn closed_port_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

fn ranges_seen(reqs: &[hub_support::Req]) -> Vec<String> {
    reqs.iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| r.header("range").map(str::to_string))
        .collect()
}

fn no_retries() -> impl Fn(&str) -> Option<String> {
    env(&[(hub::RETRIES_ENV, "0")])
}

fn incomplete_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(incomplete_files(&path));
        } else if path.to_string_lossy().ends_with(".incomplete") {
            out.push(path);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Hugging Face

#[test]
fn hf_single_file_model_is_byte_identical_and_cached() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir =
        download_model_with_env(TINY, &hf_opts(&fake, tmp.path()), &env(&[])).expect("download");

    let first = fake.hub.requests()[0].target.clone();
    assert_eq!(first, "/api/models/Qwen/Tiny-Qwen3/revision/main");
    let commit = std::fs::read_to_string(tmp.path().join("models--Qwen--Tiny-Qwen3/refs/main"))
        .expect("refs/main");
    assert_eq!(
        dir,
        tmp.path()
            .join("models--Qwen--Tiny-Qwen3/snapshots")
            .join(&commit)
    );
    assert_same_files(&dir, "tiny-qwen3");
    // The huggingface_hub layout: snapshot entries are links into blobs/.
    let link = std::fs::read_link(dir.join(BIG)).expect("model.safetensors is a symlink");
    assert!(link.starts_with("../../blobs"), "{}", link.display());
    assert!(incomplete_files(tmp.path()).is_empty());
    // Only what the server needs: README.md is listed but never requested.
    assert!(fake
        .hub
        .requests()
        .iter()
        .all(|r| !r.target.contains("README")));
    // The large ("LFS") files came from the CDN, once each.
    let large = fixture("tiny-qwen3")
        .values()
        .filter(|d| d.len() > hub_support::LFS_THRESHOLD)
        .count();
    assert_eq!(large, 2, "model.safetensors and tokenizer.json");
    let cdn_gets = || {
        fake.cdn
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .count()
    };
    assert_eq!(cdn_gets(), large);

    // A second start asks the hub for the commit and downloads nothing.
    let hub_before = fake.hub.requests().len();
    let again =
        download_model_with_env(TINY, &hf_opts(&fake, tmp.path()), &env(&[])).expect("again");
    assert_eq!(again, dir);
    assert_eq!(fake.hub.requests().len(), hub_before + 1);
    assert_eq!(cdn_gets(), large);
}

#[test]
fn hf_sharded_model_is_byte_identical() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(MOE, "tiny-qwen3-moe")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir =
        download_model_with_env(MOE, &hf_opts(&fake, tmp.path()), &env(&[])).expect("download");
    assert_same_files(&dir, "tiny-qwen3-moe");
    assert!(incomplete_files(tmp.path()).is_empty());
}

#[test]
fn hf_interrupted_download_resumes_with_range_on_the_next_run() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    fake.faults
        .lock()
        .expect("faults")
        .drop_once
        .insert(BIG.into(), CUT);
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = hf_opts(&fake, tmp.path());

    let err = download_model_with_env(TINY, &opts, &no_retries()).expect_err("cut off");
    let msg = err.full_message();
    assert!(
        msg.contains("model.safetensors") && msg.contains("resumes"),
        "{msg}"
    );
    let partial = incomplete_files(tmp.path());
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert_eq!(
        std::fs::metadata(&partial[0]).expect("partial").len(),
        CUT as u64
    );
    assert!(ranges_seen(&fake.cdn.requests()).is_empty());

    let dir = download_model_with_env(TINY, &opts, &no_retries()).expect("resumed");
    assert_eq!(
        ranges_seen(&fake.cdn.requests()),
        vec![format!("bytes={CUT}-")]
    );
    assert_same_files(&dir, "tiny-qwen3");
    assert!(incomplete_files(tmp.path()).is_empty());
}

#[test]
fn hf_broken_connection_is_resumed_within_the_run() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    fake.faults
        .lock()
        .expect("faults")
        .drop_once
        .insert(BIG.into(), CUT);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = download_model_with_env(
        TINY,
        &hf_opts(&fake, tmp.path()),
        &env(&[(hub::RETRIES_ENV, "2")]),
    )
    .expect("one run is enough");
    assert_eq!(
        ranges_seen(&fake.cdn.requests()),
        vec![format!("bytes={CUT}-")]
    );
    assert_same_files(&dir, "tiny-qwen3");
}

#[test]
fn hf_server_ignoring_range_restarts_the_file_instead_of_corrupting_it() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    {
        let mut faults = fake.faults.lock().expect("faults");
        faults.drop_once.insert(BIG.into(), CUT);
        faults.ignore_range = true;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = hf_opts(&fake, tmp.path());
    download_model_with_env(TINY, &opts, &no_retries()).expect_err("cut off");
    let dir = download_model_with_env(TINY, &opts, &no_retries()).expect("second run");
    assert_eq!(
        ranges_seen(&fake.cdn.requests()),
        vec![format!("bytes={CUT}-")]
    );
    assert_same_files(&dir, "tiny-qwen3");
}

#[test]
fn hf_unknown_repo_names_the_repo_and_the_endpoint() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let err = download_model_with_env(
        "nobody/no-such-model",
        &hf_opts(&fake, tmp.path()),
        &env(&[]),
    )
    .expect_err("unknown repo");
    let msg = err.full_message();
    assert!(msg.contains("nobody/no-such-model"), "{msg}");
    assert!(msg.contains(&fake.hub.base), "{msg}");
    assert!(
        msg.contains("not found") && msg.contains("HF_TOKEN"),
        "{msg}"
    );
}

#[test]
fn hf_unknown_revision_is_named() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let mut opts = hf_opts(&fake, tmp.path());
    opts.revision = Some("v9".into());
    let msg = download_model_with_env(TINY, &opts, &env(&[]))
        .expect_err("bad revision")
        .full_message();
    assert!(
        msg.contains("revision \"v9\"") && msg.contains(TINY),
        "{msg}"
    );
}

#[test]
fn hf_token_is_sent_as_bearer_to_the_hub_and_not_to_the_cdn() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    let tmp = tempfile::tempdir().expect("tmp");
    download_model_with_env(
        TINY,
        &hf_opts(&fake, tmp.path()),
        &env(&[("HF_TOKEN", "hf_test_token")]),
    )
    .expect("download");
    let hub_reqs = fake.hub.requests();
    assert!(!hub_reqs.is_empty());
    for r in &hub_reqs {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer hf_test_token"),
            "{}",
            r.target
        );
    }
    let cdn_reqs = fake.cdn.requests();
    assert!(!cdn_reqs.is_empty());
    for r in &cdn_reqs {
        assert_eq!(
            r.header("authorization"),
            None,
            "token leaked to the CDN: {}",
            r.target
        );
    }
}

#[test]
fn hf_token_file_is_used_when_hf_token_is_unset() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let home = tmp.path().join("hf-home");
    std::fs::create_dir_all(&home).expect("mkdir");
    std::fs::write(home.join("token"), "hf_from_file\n").expect("token file");
    let mut opts = hf_opts(&fake, tmp.path());
    opts.download_dir = None;
    let home_str = home.to_string_lossy().into_owned();
    let dir =
        download_model_with_env(TINY, &opts, &env(&[("HF_HOME", &home_str)])).expect("download");
    assert!(dir.starts_with(home.join("hub")), "{}", dir.display());
    assert_eq!(
        fake.hub.requests()[0].header("authorization"),
        Some("Bearer hf_from_file")
    );
}

#[test]
fn hf_missing_shard_is_named() {
    let mut repo = FakeRepo::from_fixture(MOE, "tiny-qwen3-moe");
    repo.missing.push("model-00002-of-00003.safetensors".into());
    let fake = FakeHf::start(vec![repo]);
    let tmp = tempfile::tempdir().expect("tmp");
    let msg = download_model_with_env(MOE, &hf_opts(&fake, tmp.path()), &env(&[]))
        .expect_err("shard")
        .full_message();
    assert!(msg.contains("model-00002-of-00003.safetensors"), "{msg}");
    assert!(
        msg.contains(MOE) && msg.contains("model.safetensors.index.json"),
        "{msg}"
    );
}

#[test]
fn hf_index_naming_a_path_outside_the_repo_is_refused() {
    let mut repo = FakeRepo::from_fixture(MOE, "tiny-qwen3-moe");
    repo.files.insert(
        "model.safetensors.index.json".into(),
        br#"{"weight_map": {"lm_head.weight": "../../../evil.safetensors"}}"#.to_vec(),
    );
    let fake = FakeHf::start(vec![repo]);
    let tmp = tempfile::tempdir().expect("tmp");
    let msg = download_model_with_env(MOE, &hf_opts(&fake, tmp.path()), &env(&[]))
        .expect_err("evil")
        .full_message();
    assert!(msg.contains("refusing the file name"), "{msg}");
    assert!(fake
        .hub
        .requests()
        .iter()
        .all(|r| !r.target.contains("evil")));
}

#[test]
fn hf_concurrent_downloads_of_one_model_share_the_work() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = hf_opts(&fake, tmp.path());
    let dirs: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| download_model_with_env(TINY, &opts, &env(&[]))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("download"))
            .collect()
    });
    assert!(dirs.iter().all(|d| *d == dirs[0]));
    assert_same_files(&dirs[0], "tiny-qwen3");
    // Each large file crossed the wire once: the others waited on the lock and found the blob.
    let gets = fake
        .cdn
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(gets, 2);
}

#[test]
fn hf_unreachable_hub_says_so_and_suggests_alternatives() {
    let tmp = tempfile::tempdir().expect("tmp");
    let endpoint = closed_port_endpoint();
    let opts = HubOptions {
        download_dir: Some(tmp.path().to_path_buf()),
        endpoint_override: Some(endpoint.clone()),
        ..HubOptions::default()
    };
    let msg = download_model_with_env(TINY, &opts, &env(&[]))
        .expect_err("unreachable")
        .full_message();
    assert!(
        msg.contains("cannot reach") && msg.contains(&endpoint),
        "{msg}"
    );
    assert!(
        msg.contains("local model directory") && msg.contains("HF_ENDPOINT"),
        "{msg}"
    );
}

#[test]
fn hf_unreachable_hub_falls_back_to_a_complete_cache_and_offline_mode_uses_it() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let offline = env(&[("HF_HUB_OFFLINE", "1")]);
    let msg = download_model_with_env(TINY, &hf_opts(&fake, tmp.path()), &offline)
        .expect_err("empty")
        .full_message();
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
    assert!(fake.hub.requests().is_empty());

    let dir =
        download_model_with_env(TINY, &hf_opts(&fake, tmp.path()), &env(&[])).expect("download");
    let opts = HubOptions {
        download_dir: Some(tmp.path().to_path_buf()),
        endpoint_override: Some(closed_port_endpoint()),
        ..HubOptions::default()
    };
    assert_eq!(
        download_model_with_env(TINY, &opts, &env(&[])).expect("cache"),
        dir
    );
    assert_eq!(
        download_model_with_env(TINY, &opts, &offline).expect("offline"),
        dir
    );
}

#[test]
fn hf_pinned_commit_in_the_cache_needs_no_network() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir =
        download_model_with_env(TINY, &hf_opts(&fake, tmp.path()), &env(&[])).expect("download");
    let commit = dir
        .file_name()
        .expect("commit")
        .to_string_lossy()
        .into_owned();
    let before = fake.hub.requests().len();
    let mut opts = hf_opts(&fake, tmp.path());
    opts.revision = Some(commit);
    assert_eq!(
        download_model_with_env(TINY, &opts, &env(&[])).expect("pinned"),
        dir
    );
    assert_eq!(fake.hub.requests().len(), before);
}

#[test]
fn not_a_hub_id_is_refused_before_any_request() {
    let tmp = tempfile::tempdir().expect("tmp");
    for bad in [
        "../etc/passwd",
        "/abs/path",
        "a/b/c",
        "",
        "Qwen/..",
        "bad name/x",
    ] {
        let opts = HubOptions {
            download_dir: Some(tmp.path().to_path_buf()),
            endpoint_override: Some(closed_port_endpoint()),
            ..HubOptions::default()
        };
        let msg = download_model_with_env(bad, &opts, &env(&[]))
            .expect_err(bad)
            .full_message();
        assert!(msg.contains("not a local model directory"), "{bad}: {msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// ModelScope

#[test]
fn ms_single_file_model_is_byte_identical_and_cached() {
    let fake = FakeModelScope::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    let tmp = tempfile::tempdir().expect("tmp");
    // Chosen through the environment, as vLLM does.
    let mut opts = ms_opts(&fake, tmp.path());
    opts.use_modelscope = false;
    let ms_env = env(&[("VLLM_USE_MODELSCOPE", "True")]);
    let dir = download_model_with_env(TINY, &opts, &ms_env).expect("download");
    assert_eq!(
        dir,
        tmp.path().join("models/Qwen--Tiny-Qwen3/snapshots/master")
    );
    assert_same_files(&dir, "tiny-qwen3");
    assert!(incomplete_files(tmp.path()).is_empty());
    let first = fake.hub.requests();
    let config = first
        .iter()
        .find(|r| r.query("FilePath").as_deref() == Some("config.json"))
        .expect("config.json requested");
    assert_eq!(
        config.target,
        "/api/v1/models/Qwen/Tiny-Qwen3/repo?Revision=master&FilePath=config.json"
    );

    // Complete in the cache: no request at all.
    let again = download_model_with_env(TINY, &opts, &ms_env).expect("again");
    assert_eq!(again, dir);
    assert_eq!(fake.hub.requests().len(), first.len());
}

#[test]
fn ms_sharded_model_is_byte_identical() {
    let fake = FakeModelScope::start(vec![FakeRepo::from_fixture(MOE, "tiny-qwen3-moe")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir =
        download_model_with_env(MOE, &ms_opts(&fake, tmp.path()), &env(&[])).expect("download");
    assert_same_files(&dir, "tiny-qwen3-moe");
}

#[test]
fn ms_interrupted_download_resumes_with_range_on_the_next_run() {
    let fake = FakeModelScope::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    fake.faults
        .lock()
        .expect("faults")
        .drop_once
        .insert(BIG.into(), CUT);
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = ms_opts(&fake, tmp.path());

    let msg = download_model_with_env(TINY, &opts, &no_retries())
        .expect_err("cut off")
        .full_message();
    assert!(
        msg.contains("model.safetensors") && msg.contains("resumes"),
        "{msg}"
    );
    let partial = tmp
        .path()
        .join("models/Qwen--Tiny-Qwen3/snapshots/master/model.safetensors.incomplete");
    assert_eq!(
        std::fs::metadata(&partial).expect("partial").len(),
        CUT as u64
    );

    let dir = download_model_with_env(TINY, &opts, &no_retries()).expect("resumed");
    // The API host got the range and redirected it; the bucket served it.
    let api_big: Vec<_> = fake
        .hub
        .requests()
        .into_iter()
        .filter(|r| r.query("FilePath").as_deref() == Some(BIG))
        .collect();
    assert_eq!(api_big.len(), 2);
    assert_eq!(
        api_big[1].header("range"),
        Some(format!("bytes={CUT}-").as_str())
    );
    assert_eq!(
        ranges_seen(&fake.oss.requests()),
        vec![format!("bytes={CUT}-")]
    );
    assert_same_files(&dir, "tiny-qwen3");
    assert!(incomplete_files(tmp.path()).is_empty());
}

#[test]
fn ms_small_file_answered_without_range_support_restarts_cleanly() {
    let fake = FakeModelScope::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    // tokenizer_config.json is served by the API host itself, which ignores Range.
    fake.faults
        .lock()
        .expect("faults")
        .drop_once
        .insert("tokenizer_config.json".into(), 100);
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = ms_opts(&fake, tmp.path());
    download_model_with_env(TINY, &opts, &no_retries()).expect_err("cut off");
    let dir = download_model_with_env(TINY, &opts, &no_retries()).expect("second run");
    let ranged: Vec<_> = fake
        .hub
        .requests()
        .into_iter()
        .filter(|r| r.query("FilePath").as_deref() == Some("tokenizer_config.json"))
        .map(|r| r.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranged, vec![None, Some("bytes=100-".to_string())]);
    assert_same_files(&dir, "tiny-qwen3");
}

#[test]
fn ms_unknown_repo_names_the_repo_and_the_endpoint() {
    let fake = FakeModelScope::start(vec![]);
    let tmp = tempfile::tempdir().expect("tmp");
    let msg = download_model_with_env(
        "nobody/no-such-model",
        &ms_opts(&fake, tmp.path()),
        &env(&[]),
    )
    .expect_err("unknown")
    .full_message();
    assert!(
        msg.contains("nobody/no-such-model") && msg.contains(&fake.hub.base),
        "{msg}"
    );
    assert!(msg.contains("not found on ModelScope"), "{msg}");
}

#[test]
fn ms_missing_shard_is_named() {
    let mut repo = FakeRepo::from_fixture(MOE, "tiny-qwen3-moe");
    repo.missing.push("model-00003-of-00003.safetensors".into());
    let fake = FakeModelScope::start(vec![repo]);
    let tmp = tempfile::tempdir().expect("tmp");
    let msg = download_model_with_env(MOE, &ms_opts(&fake, tmp.path()), &env(&[]))
        .expect_err("shard")
        .full_message();
    assert!(msg.contains("model-00003-of-00003.safetensors"), "{msg}");
}

#[test]
fn ms_token_goes_to_the_api_host_only() {
    let fake = FakeModelScope::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    let tmp = tempfile::tempdir().expect("tmp");
    download_model_with_env(
        TINY,
        &ms_opts(&fake, tmp.path()),
        &env(&[("MODELSCOPE_API_TOKEN", "ms-secret")]),
    )
    .expect("download");
    for r in fake.hub.requests() {
        assert_eq!(r.header("authorization"), Some("Bearer ms-secret"));
        assert_eq!(r.header("cookie"), Some("m_session_id=ms-secret"));
    }
    let oss = fake.oss.requests();
    assert!(!oss.is_empty());
    for r in oss {
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.header("cookie"), None);
    }
}

#[test]
fn ms_unreachable_endpoint_says_so() {
    let tmp = tempfile::tempdir().expect("tmp");
    let endpoint = closed_port_endpoint();
    let opts = HubOptions {
        download_dir: Some(tmp.path().to_path_buf()),
        use_modelscope: true,
        endpoint_override: Some(endpoint.clone()),
        ..HubOptions::default()
    };
    let msg = download_model_with_env(TINY, &opts, &env(&[]))
        .expect_err("unreachable")
        .full_message();
    assert!(
        msg.contains("cannot reach ModelScope") && msg.contains(&endpoint),
        "{msg}"
    );
    assert!(msg.contains("local model directory"), "{msg}");
}

#[test]
fn ms_directory_of_an_older_sdk_is_reused() {
    let tmp = tempfile::tempdir().expect("tmp");
    // modelscope <= 1.37 kept Qwen/Qwen3-0.6B in hub/models/Qwen/Qwen3-0___6B.
    let legacy = tmp.path().join("hub/models/Qwen/Tiny-0___6B");
    std::fs::create_dir_all(&legacy).expect("mkdir");
    for (name, data) in fixture("tiny-qwen3") {
        std::fs::write(legacy.join(name), data).expect("write");
    }
    let opts = HubOptions {
        download_dir: Some(tmp.path().to_path_buf()),
        use_modelscope: true,
        endpoint_override: Some(closed_port_endpoint()),
        ..HubOptions::default()
    };
    assert_eq!(
        download_model_with_env("Qwen/Tiny-0.6B", &opts, &env(&[])).expect("legacy"),
        legacy
    );
}

// ---------------------------------------------------------------------------------------------
// The environment

#[test]
fn endpoints_from_env() {
    assert_eq!(
        hub::hf_endpoint_from_env(env(&[])),
        "https://huggingface.co"
    );
    assert_eq!(
        hub::hf_endpoint_from_env(env(&[("HF_ENDPOINT", "https://hf-mirror.com/")])),
        "https://hf-mirror.com"
    );
    assert_eq!(
        hub::hf_endpoint_from_env(env(&[("HF_ENDPOINT", "  ")])),
        "https://huggingface.co"
    );
    assert_eq!(
        hub::modelscope_endpoint_from_env(env(&[])),
        "https://www.modelscope.cn"
    );
    assert_eq!(
        hub::modelscope_endpoint_from_env(env(&[("MODELSCOPE_DOMAIN", "modelscope.ai")])),
        "https://modelscope.ai"
    );
    assert_eq!(
        hub::modelscope_endpoint_from_env(env(&[
            ("MODELSCOPE_DOMAIN", "modelscope.ai"),
            ("MODELSCOPE_ENDPOINT", "http://10.0.0.1:8080"),
        ])),
        "http://10.0.0.1:8080"
    );
}

#[test]
fn cache_dirs_and_tokens_from_env() {
    let p = |s: &str| Some(PathBuf::from(s));
    assert_eq!(
        hub::hf_cache_dir_from_env(env(&[("HOME", "/home/u")])),
        p("/home/u/.cache/huggingface/hub")
    );
    assert_eq!(
        hub::hf_cache_dir_from_env(env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")])),
        p("/xdg/huggingface/hub")
    );
    assert_eq!(
        hub::hf_cache_dir_from_env(env(&[("HOME", "/home/u"), ("HF_HOME", "/hf")])),
        p("/hf/hub")
    );
    assert_eq!(
        hub::hf_cache_dir_from_env(env(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/cache")])),
        p("/cache")
    );
    assert_eq!(hub::hf_cache_dir_from_env(env(&[])), None);
    assert_eq!(
        hub::hf_token_path_from_env(env(&[("HF_HOME", "/hf")])),
        p("/hf/token")
    );
    assert_eq!(hub::hf_token_from_env(env(&[])), None);
    assert_eq!(
        hub::hf_token_from_env(env(&[("HUGGING_FACE_HUB_TOKEN", "old")])).as_deref(),
        Some("old")
    );
    assert_eq!(
        hub::hf_token_from_env(env(&[
            ("HUGGING_FACE_HUB_TOKEN", "old"),
            ("HF_TOKEN", "new")
        ]))
        .as_deref(),
        Some("new")
    );
    assert_eq!(
        hub::modelscope_cache_dir_from_env(env(&[("HOME", "/home/u")])),
        p("/home/u/.cache/modelscope")
    );
    assert_eq!(
        hub::modelscope_cache_dir_from_env(env(&[
            ("HOME", "/home/u"),
            ("MODELSCOPE_CACHE", "/ms")
        ])),
        p("/ms")
    );
    assert_eq!(
        hub::modelscope_token_from_env(env(&[("MODELSCOPE_API_TOKEN", "t")])).as_deref(),
        Some("t")
    );
}

#[test]
fn switches_from_env() {
    assert!(hub::use_modelscope_from_env(env(&[(
        "VLLM_USE_MODELSCOPE",
        "True"
    )])));
    assert!(hub::use_modelscope_from_env(env(&[(
        "VLLM_USE_MODELSCOPE",
        "1"
    )])));
    assert!(!hub::use_modelscope_from_env(env(&[(
        "VLLM_USE_MODELSCOPE",
        "False"
    )])));
    assert!(!hub::use_modelscope_from_env(env(&[])));
    assert!(hub::hf_offline_from_env(env(&[("HF_HUB_OFFLINE", "1")])));
    assert!(hub::hf_offline_from_env(env(&[(
        "TRANSFORMERS_OFFLINE",
        "yes"
    )])));
    assert!(!hub::hf_offline_from_env(env(&[("HF_HUB_OFFLINE", "0")])));
    assert_eq!(hub::download_retries_from_env(env(&[])), 5);
    assert_eq!(
        hub::download_retries_from_env(env(&[(hub::RETRIES_ENV, "0")])),
        0
    );
}

#[test]
fn proxies_from_env() {
    let e = env(&[
        ("HTTPS_PROXY", "http://proxy:3128"),
        ("http_proxy", "http://plain:80"),
        ("NO_PROXY", "internal.example, .corp"),
    ]);
    assert_eq!(
        hub::proxy_from_env(&e, "https").as_deref(),
        Some("http://proxy:3128")
    );
    assert_eq!(
        hub::proxy_from_env(&e, "http").as_deref(),
        Some("http://plain:80")
    );
    assert_eq!(
        hub::proxy_from_env(env(&[("ALL_PROXY", "socks5://s:1080")]), "https").as_deref(),
        Some("socks5://s:1080")
    );
    assert!(hub::no_proxy_matches(&e, "internal.example"));
    assert!(hub::no_proxy_matches(&e, "hub.corp"));
    assert!(hub::no_proxy_matches(&e, "127.0.0.1"));
    assert!(!hub::no_proxy_matches(&e, "huggingface.co"));
    assert!(hub::no_proxy_matches(
        env(&[("no_proxy", "*")]),
        "huggingface.co"
    ));
}

#[test]
fn loopback_is_never_proxied_so_the_fakes_work_behind_a_proxy() {
    let fake = FakeHf::start(vec![FakeRepo::from_fixture(TINY, "tiny-qwen3")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let e = env(&[
        ("HTTP_PROXY", &closed_port_endpoint()),
        ("HTTPS_PROXY", &closed_port_endpoint()),
    ]);
    let dir = download_model_with_env(TINY, &hf_opts(&fake, tmp.path()), &e).expect("direct");
    assert_same_files(&dir, "tiny-qwen3");
}
