//! The manifests: files exist, render, validate against the Kubernetes
//! schemas and agree with each other and with the agent's config.
use super::*;

/// Every file the kustomization names, recursively through the bases it
/// includes.
fn kustomization_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let kustomization = dir.join("kustomization.yaml");
    assert!(
        kustomization.is_file(),
        "{} missing",
        kustomization.display()
    );
    let k = yaml_one(&kustomization);
    for resource in k["resources"].as_sequence().into_iter().flatten() {
        let path = dir.join(resource.as_str().expect("resource path"));
        if path.is_dir() {
            kustomization_files(&path, out);
        } else {
            assert!(path.is_file(), "{} listed but missing", path.display());
            out.push(path);
        }
    }
    for generator in k["configMapGenerator"].as_sequence().into_iter().flatten() {
        for file in generator["files"].as_sequence().into_iter().flatten() {
            let path = dir.join(file.as_str().expect("generator file"));
            assert!(path.is_file(), "{} listed but missing", path.display());
            // Generated ConfigMaps carry YAML or JSON; both must parse.
            let text = fs::read_to_string(&path).unwrap();
            if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            } else {
                yaml_docs_of(&text, &path.display().to_string());
            }
        }
    }
}

/// The manifests as kustomize renders them, or `None` without kubectl.
fn rendered() -> Option<String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy())
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).expect("UTF-8"))
}

#[test]
fn kustomization_files_exist_and_render() {
    let mut files = Vec::new();
    kustomization_files(&deploy(), &mut files);
    let mut kinds = BTreeSet::new();
    for file in &files {
        for doc in yaml_docs(file) {
            kinds.insert(str_at(&doc, &["kind"]).to_owned());
        }
    }
    for kind in [
        "Namespace",
        "ServiceAccount",
        "Secret",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    // kubectl is not a Debian package; where it exists (it bundles
    // kustomize), the real rendering is checked too.
    let Some(text) = rendered() else {
        eprintln!("kubectl not installed: checked the listed files, not the rendering");
        return;
    };
    let docs = yaml_docs_of(&text, "kubectl kustomize");
    for doc in &docs {
        if doc["kind"] != "Namespace" {
            assert_eq!(
                doc["metadata"]["namespace"],
                "egret-system",
                "{}",
                doc["metadata"]["name"].as_str().unwrap_or("?")
            );
        }
    }
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "egret-grafana-dashboard")
        .expect("dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = str_at(dashboard, &["data", "egret-dashboard.json"]);
    serde_json::from_str::<Value>(json).expect("dashboard JSON");
    // The DaemonSet mounts the generated (hash-suffixed) ConfigMaps.
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let volumes = seq(at(ds, &["spec", "template", "spec", "volumes"]));
    for (volume, prefix) in [("config", "egret-config-"), ("rules", "egret-rules-")] {
        let v = volumes.iter().find(|v| v["name"] == volume).unwrap();
        let name = str_at(v, &["configMap", "name"]);
        assert!(name.starts_with(prefix), "{volume}: {name}");
        assert!(
            docs.iter()
                .any(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name),
            "{name} not rendered"
        );
    }
}

#[test]
fn manifests_validate_against_kubernetes_schemas() {
    const TEST: &str = "manifests_validate_against_kubernetes_schemas";
    if !have_tool(
        TEST,
        Command::new("python3").args(["-c", "import kubernetes_validate"]),
        "python3 kubernetes-validate",
    ) {
        return;
    }
    let mut files = Vec::new();
    kustomization_files(&deploy(), &mut files);
    let dir = std::env::temp_dir().join(unique_id("kv"));
    fs::create_dir_all(&dir).unwrap();
    if let Some(text) = rendered() {
        let path = dir.join("rendered.yaml");
        fs::write(&path, text).unwrap();
        files.push(path);
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
        ])
        .arg(KUBERNETES_VERSION)
        .args(&files)
        .output()
        .expect("python3 -m kubernetes_validate");
    let _ = fs::remove_dir_all(&dir);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "validation failed:\n{report}");
    let mut passed = BTreeSet::new();
    for line in report.lines() {
        if let Some(rest) = line.split(" passed for resource ").nth(1) {
            passed.insert(rest.split(' ').next().unwrap_or("").to_owned());
        } else if line.contains("Couldn't find schema for kind") {
            assert!(
                CRD_KINDS
                    .iter()
                    .any(|k| line.contains(&format!("kind {k} "))),
                "a resource skipped for lack of a schema: {line}"
            );
        } else if line.starts_with("ERROR") || line.starts_with("WARN") {
            panic!("unexpected report line: {line}\n{report}");
        }
    }
    for resource in [
        "namespace/egret-system",
        "serviceaccount/egret",
        "secret/egret-webhook",
        "service/egret",
        "daemonset/egret",
    ] {
        assert!(
            passed.contains(resource),
            "{resource} not validated:\n{report}"
        );
    }
}

#[test]
fn manifests_are_consistent_with_each_other_and_the_config() {
    let dir = deploy();
    let container = daemonset_container();
    let ds = yaml_one(&dir.join("daemonset.yaml"));
    let pod = at(&ds, &["spec", "template"]);
    let spec = &pod["spec"];

    // Not privileged; hardened otherwise.
    let sc = &container["securityContext"];
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert!(
        seq(&spec["tolerations"])
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "tolerates every taint"
    );
    let caps = daemonset_capabilities();
    assert!(
        !caps.iter().any(|c| c == "SYS_ADMIN"),
        "CAP_SYS_ADMIN is not needed on 5.8+"
    );

    // Probes and the Service use the container's named port, which is the
    // port egret.yaml listens on.
    let config = yaml_one(&dir.join("egret.yaml"));
    let listen = str_at(&config, &["listen"]);
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let ports = seq(&container["ports"]);
    let metrics = ports.iter().find(|p| p["name"] == "metrics").unwrap();
    assert_eq!(metrics["containerPort"].as_u64(), Some(port));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");
    let args: Vec<&str> = seq(&container["args"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args, ["--config", "/etc/egret/egret.yaml"]);
    assert!(
        seq(&container["env"])
            .iter()
            .any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
    );

    let service = yaml_one(&dir.join("service.yaml"));
    let labels = &pod["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(
            &labels[key.as_str().unwrap()],
            value,
            "Service selects the pods"
        );
    }
    let service_port = &seq(&service["spec"]["ports"])[0];
    assert_eq!(service_port["name"], "metrics");
    assert_eq!(service_port["port"].as_u64(), Some(port));
    assert_eq!(service_port["targetPort"], "metrics");
    let monitor = yaml_one(&dir.join("servicemonitor.yaml"));
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][key.as_str().unwrap()], value);
    }
    let endpoint = &seq(&monitor["spec"]["endpoints"])[0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    // The alerting rules select job=~".*egret.*"; the job is the value of
    // the Service label named by jobLabel.
    let job_label = str_at(&monitor, &["spec", "jobLabel"]);
    assert!(str_at(&service, &["metadata", "labels", job_label]).contains("egret"));

    // Every path egret.yaml names is mounted where the DaemonSet puts it.
    let mounts = seq(&container["volumeMounts"]);
    let mount = |name: &str| -> &str {
        let m = mounts
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no mount {name}"));
        assert_eq!(m["readOnly"], true, "{name} is mounted read-only");
        m["mountPath"].as_str().unwrap()
    };
    assert_eq!(mount("config"), "/etc/egret/egret.yaml");
    let rules_files: Vec<&str> = seq(&config["rules_files"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(
        rules_files,
        ["/usr/share/egret/rules.d", mount("rules")],
        "bundled rules (from the image), then the egret-rules ConfigMap"
    );
    assert_eq!(
        str_at(&config, &["identity", "host_passwd"]),
        mount("host-passwd")
    );
    assert_eq!(
        str_at(&config, &["identity", "containerd_socket"]),
        mount("containerd-socket")
    );
    assert_eq!(mount("cgroup"), "/sys/fs/cgroup");
    assert_eq!(mount("tracefs"), "/sys/kernel/tracing");
    let secrets_dir = mount("webhook-secret");
    let secret = yaml_one(&dir.join("webhook-secret.yaml"));
    let volumes = seq(&spec["volumes"]);
    let secret_volume = volumes
        .iter()
        .find(|v| v["name"] == "webhook-secret")
        .unwrap();
    assert_eq!(
        secret_volume["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    let hook = &seq(&config["webhooks"])[0];
    for file in [
        str_at(hook, &["bearer_token", "file"]),
        str_at(hook, &["hmac", "secret", "file"]),
    ] {
        let key = file
            .strip_prefix(&format!("{secrets_dir}/"))
            .unwrap_or_else(|| panic!("{file} is not under {secrets_dir}"));
        assert!(
            !secret["stringData"][key].is_null(),
            "Secret has no key {key}"
        );
    }

    // The image reference matches what `cargo xtask image` builds.
    let kustomization = yaml_one(&dir.join("kustomization.yaml"));
    let image = &seq(&kustomization["images"])[0];
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(image["name"], "localhost/egret");
    assert_eq!(image["newTag"], version);
    assert_eq!(
        container["image"].as_str(),
        Some(format!("localhost/egret:{version}").as_str())
    );
}

/// The configuration the ConfigMap ships passes the agent's own checker.
#[test]
fn shipped_config_passes_egret_config_check() {
    let out = Command::new(crate::support::agent_path())
        .args(["config", "check"])
        .arg(deploy().join("egret.yaml"))
        .output()
        .expect("egret config check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rules ConfigMap's files load after the bundled rules, as the
/// shipped `rules_files` orders them.
#[test]
fn shipped_rules_load_after_the_bundled_ones() {
    let out = Command::new(crate::support::agent_path())
        .args(["rules", "check"])
        .arg(repo().join("rules"))
        .arg(deploy().join("rules"))
        .output()
        .expect("egret rules check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// The agent under exactly the DaemonSet's capabilities (root)
