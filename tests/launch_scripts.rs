//! `launch/cluster.sh` builds the mpirun line a cluster job needs, and refuses bad input.

use std::process::Command;

fn cluster_sh(args: &[&str]) -> std::process::Output {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new("bash")
        .arg(root.join("launch/cluster.sh"))
        .args(args)
        .output()
        .expect("running launch/cluster.sh")
}

#[test]
fn cluster_launch_line_has_ranks_hosts_and_threads() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "# two nodes\nnode-a\nnode-b:4\n\n").unwrap();
    let o = cluster_sh(&[
        "--hostfile",
        hosts.to_str().unwrap(),
        "--ranks-per-node",
        "3",
        "--threads",
        "5",
        "--dry-run",
        "train",
        "exp.toml",
        "--set",
        "train.epochs=2",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for want in [
        "mpirun -np 6 -ppn 3 -f",
        "OMP_NUM_THREADS 5",
        "shardrec train exp.toml --set train.threads=5 --set train.epochs=2",
    ] {
        assert!(out.contains(want), "{want:?} missing from: {out}");
    }
}

#[test]
fn cluster_launch_refuses_bad_arguments_by_name() {
    let o = cluster_sh(&["--ranks-per-node", "two", "train", "exp.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ranks-per-node"));
    let o = cluster_sh(&["--hostfile", "/nonexistent/hosts", "train", "exp.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/hosts"));
}
