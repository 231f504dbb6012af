//! Start-up across nodes (`--nnodes > 1`) on the NPU: this process's HCCL timeouts, then the
//! rendezvous (node 0 waits for the other nodes and refuses one with another model, build or
//! layout; the others join node 0), before any weights are loaded; then each node loads its
//! pipeline stage: node 0 as the engine's executor, the others headless, stepped by node 0.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use qwen3_backend_ascend::comm::{root_info, root_info_bytes, root_info_from_bytes, HcclRootInfo};
use qwen3_backend_ascend::{AscendBackend, AscendOptions};
use qwen3_model::load::{LoadOptions, Placement};
use qwen3_model::load_stage::{ascend_stage_executor, PipelinePlace};
use qwen3_model::pipeline::stage_layers;
use qwen3_model::pipeline_node::{serve_stage, PipelineLeader};
use qwen3_model::rendezvous::{join, Fingerprint, Layout, Leader, NodeLink};
use qwen3_model::ResizableExecutor;
use tracing::info;

use crate::cli::ModelArgs;

/// One HCCL timeout this process sets for itself when it serves with other nodes.
struct HcclTimeout {
    var: &'static str,
    flag: &'static str,
    /// Accepted seconds, as the CANN environment variable reference gives them.
    range: std::ops::RangeInclusive<u64>,
    default: u64,
}

/// Seconds a rank waits for the others to form a group. CANN 8.3.RC1 environment variable
/// reference, HCCL_CONNECT_TIMEOUT (envref_07_0149): integer in [120, 7200], default 120, read
/// when the communicator is made. 600 here: a node loading 235B weights may start minutes
/// after the other.
const CONNECT: HcclTimeout = HcclTimeout {
    var: "HCCL_CONNECT_TIMEOUT",
    flag: "hccl-connect-timeout",
    range: 120..=7200,
    default: 600,
};

/// Seconds a collective waits for its peers. Same reference, HCCL_EXEC_TIMEOUT
/// (envref_07_0078): on Atlas A2 [0, 2147483647], default 1836, 0 = never. 0 is refused
/// here (a dead node must end in an error, not a hang), and 300 is the default: a step of
/// this server takes well under a second, HCCL's half hour would hold in-flight requests.
/// (A per-communicator `HcclCommConfig.hcclExecTimeOut` appears only in CANN 8.5's HCCL
/// guide, hcclug_000074; the variable is what the 8.x releases this targets all read.)
const EXEC: HcclTimeout = HcclTimeout {
    var: "HCCL_EXEC_TIMEOUT",
    flag: "hccl-exec-timeout",
    range: 1..=2_147_483_647,
    default: 300,
};

impl HcclTimeout {
    /// The seconds to use and where they came from: the flag, else the environment, else
    /// the default; out of HCCL's range is an error naming the source.
    fn resolve(&self, flag: Option<u64>, env: Option<&str>) -> anyhow::Result<(u64, String)> {
        let (secs, source) = match (flag, env.map(str::trim).filter(|v| !v.is_empty())) {
            (Some(s), _) => (s, format!("--{}", self.flag)),
            (None, Some(v)) => (
                v.parse::<u64>().with_context(|| {
                    format!("{}={v:?} is not a whole number of seconds", self.var)
                })?,
                format!("{} from the environment", self.var),
            ),
            (None, None) => (self.default, "the multi-node default".into()),
        };
        if !self.range.contains(&secs) {
            bail!(
                "{source}: {secs} s is outside HCCL's {}..={} for {}",
                self.range.start(),
                self.range.end(),
                self.var
            );
        }
        Ok((secs, source))
    }
}

/// Sets HCCL_CONNECT_TIMEOUT and HCCL_EXEC_TIMEOUT in this process before any communicator
/// is made (HCCL reads them then), so that a node that never joins or dies ends its peers'
/// wait with HCCL's timeout error rather than a hang.
/// Returns the execution timeout's seconds.
fn set_hccl_timeouts(args: &ModelArgs) -> anyhow::Result<u64> {
    let mut exec = EXEC.default;
    for (t, flag) in [
        (CONNECT, args.hccl_connect_timeout),
        (EXEC, args.hccl_exec_timeout),
    ] {
        let (secs, source) = t.resolve(flag, std::env::var(t.var).ok().as_deref())?;
        // Start-up, before the rank threads exist: nothing reads the environment meanwhile.
        std::env::set_var(t.var, secs.to_string());
        info!("{}={secs} ({source})", t.var);
        if t.var == EXEC.var {
            exec = secs;
        }
    }
    Ok(exec)
}

fn master(args: &ModelArgs) -> anyhow::Result<SocketAddr> {
    let host = args.master_addr.as_deref().unwrap_or("127.0.0.1");
    (host, args.master_port)
        .to_socket_addrs()
        .with_context(|| format!("resolving --master-addr {host}"))?
        .next()
        .with_context(|| format!("--master-addr {host} has no address"))
}

/// What this node is once every node has met.
pub struct Role {
    place: PipelinePlace,
    cann: Arc<qwen3_backend_ascend::device_query::Cann>,
    devices: Vec<i32>,
    options: AscendOptions,
    /// HCCL's execution timeout: how long node 0 waits for a node's answer to a step.
    exec_timeout: Duration,
    kind: RoleKind,
}

enum RoleKind {
    /// Node 0: the engine and the API, with links to every other node.
    Leader(Vec<NodeLink>),
    /// Another node: headless, stepped by node 0 over this link.
    Headless(NodeLink),
}

/// Everything a multi-node start does before loading; errors for the CPU, whose scale-out is
/// replicas.
pub fn start(
    args: &ModelArgs,
    dir: &std::path::Path,
    placement: &Placement,
    num_layers: usize,
) -> anyhow::Result<Role> {
    let nnodes = args.nnodes;
    let Placement::Npu {
        cann,
        devices,
        options,
    } = placement
    else {
        bail!(
            "--nnodes {nnodes}: the CPU backend serves from one machine; scale it out with replicas behind a load balancer (deploy/kubernetes)"
        );
    };
    let layers = stage_layers(num_layers, args.pipeline_parallel_size, args.node_rank)?;
    info!(
        "pipeline stage {} of {}: decoder layers {}..{} of {num_layers}",
        args.node_rank, args.pipeline_parallel_size, layers.start, layers.end
    );
    let exec_timeout = Duration::from_secs(set_hccl_timeouts(args)?);
    let layout = Layout {
        nnodes: nnodes as u32,
        tensor_parallel_size: args.tensor_parallel_size as u32,
        pipeline_parallel_size: args.pipeline_parallel_size as u32,
    };
    let fingerprint = Fingerprint::of_model(dir)?;
    let master = master(args)?;
    let timeout = Duration::from_secs_f64(args.rendezvous_timeout);
    let (roots, kind) = if args.node_rank == 0 {
        let leader = Leader::bind(master, layout, fingerprint)?;
        info!(
            "rendezvous: node 0 (model {fingerprint}) waits on {master} up to {timeout:?} for {} other node(s)",
            nnodes - 1
        );
        let mut roots = Vec::new();
        let nodes = leader.gather(timeout, || {
            // One pipeline group per TP rank, whose rank 0 is that TP rank here on stage 0:
            // its root info carries that device, so it is made with the device current.
            let mut bytes = Vec::new();
            for &device in devices {
                let backend =
                    AscendBackend::with_options(Arc::clone(cann), device, options.clone())?;
                let r = root_info(&backend)?;
                bytes.extend(root_info_bytes(&r));
                roots.push(r);
            }
            Ok::<_, qwen3_backend::BackendError>(bytes)
        })?;
        info!("rendezvous: all {nnodes} nodes met");
        (roots, RoleKind::Leader(nodes))
    } else {
        info!(
            "rendezvous: node {} (model {fingerprint}) joins node 0 at {master}, up to {timeout:?}",
            args.node_rank
        );
        let joined = join(master, args.node_rank as u32, layout, fingerprint, timeout)?;
        info!("rendezvous: joined a group of {} HCCL ranks", joined.world);
        let size = std::mem::size_of::<HcclRootInfo>();
        let roots = joined
            .root_info
            .chunks(size)
            .map(root_info_from_bytes)
            .collect::<Result<Vec<_>, _>>()?;
        if roots.len() != args.tensor_parallel_size {
            bail!(
                "node 0 sent {} pipeline root infos for tensor parallel size {}",
                roots.len(),
                args.tensor_parallel_size
            );
        }
        (roots, RoleKind::Headless(joined.link))
    };
    Ok(Role {
        place: PipelinePlace {
            stage: args.node_rank,
            stages: args.pipeline_parallel_size,
            layers,
            roots,
        },
        exec_timeout,
        cann: Arc::clone(cann),
        devices: devices.clone(),
        options: options.clone(),
        kind,
    })
}

/// Loads this node's stage. Node 0 gets the executor the engine drives; another node serves
/// its stage headless until node 0 stops the group, then the process exits (it has no API,
/// output or engine of its own), or fails with the reason the group broke.
pub fn executor(role: Role, opts: &LoadOptions) -> anyhow::Result<Box<dyn ResizableExecutor>> {
    let devices = &role.devices;
    let t0 = std::time::Instant::now();
    let stage = role.place.stage;
    // HCCL ranks run eagerly (collectives are not captured); without capture a decode step
    // must not be padded to a capture size either, as each stage sizes the hidden states it
    // receives from the step's tokens.
    let options = AscendOptions {
        graph_capture: false,
        capture_batch_sizes: Vec::new(),
        ..role.options
    };
    let ex = ascend_stage_executor(opts, role.cann, devices, options, role.place)?;
    info!(
        "pipeline stage {stage} loaded on NPU {devices:?} in {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    match role.kind {
        RoleKind::Leader(nodes) => {
            // A node's stage fails its own HCCL transfers within the timeout; its answer
            // (with the reason) may take a little longer to arrive.
            let wait = role.exec_timeout + Duration::from_secs(30);
            Ok(Box::new(PipelineLeader::new(ex, nodes, wait)?))
        }
        RoleKind::Headless(link) => {
            info!("pipeline stage {stage}: headless, stepped by node 0");
            serve_stage(link, ex)?;
            info!("node 0 stopped the group; exiting");
            std::process::exit(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hccl_timeouts_come_from_the_flag_then_the_environment_then_the_default() {
        let (s, src) = CONNECT.resolve(Some(900), Some("200")).unwrap();
        assert_eq!((s, src.as_str()), (900, "--hccl-connect-timeout"));
        let (s, src) = CONNECT.resolve(None, Some(" 200 ")).unwrap();
        assert_eq!(s, 200);
        assert!(src.contains("environment"), "{src}");
        assert_eq!(CONNECT.resolve(None, None).unwrap().0, 600);
        assert_eq!(EXEC.resolve(None, Some("")).unwrap().0, 300);
    }

    #[test]
    fn hccl_timeouts_outside_hccls_range_are_refused() {
        let e = CONNECT.resolve(Some(60), None).unwrap_err().to_string();
        assert!(e.contains("outside HCCL's 120..=7200"), "{e}");
        let e = CONNECT.resolve(None, Some("8000")).unwrap_err().to_string();
        assert!(
            e.contains("HCCL_CONNECT_TIMEOUT from the environment"),
            "{e}"
        );
        // 0 is HCCL's "never": a dead node would hang its peers.
        assert!(EXEC.resolve(Some(0), None).is_err());
        assert!(EXEC.resolve(None, Some("soon")).is_err());
    }
}
