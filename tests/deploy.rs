//! The deployment files under `deploy/` agree with the code: every configuration they carry
//! loads, and the probe paths, ports, mounted paths and commands they name are the ones
//! the connector uses. (No Docker engine or cluster runs here, so this is what keeps them
//! from rotting.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use o365_connector::config::Config;
use serde::Deserialize;
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// Every document of a YAML file, as JSON values.
fn yaml_documents(path: &str) -> Vec<Value> {
    let text = read(path);
    yaml_serde::Deserializer::from_str(&text)
        .map(|document| {
            let value = yaml_serde::Value::deserialize(document)
                .unwrap_or_else(|error| panic!("{path}: {error}"));
            serde_json::to_value(value).unwrap()
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn secrets(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|name| (name.to_string(), "a-secret-value".to_string()))
        .collect()
}

fn parent_of(path: &Path) -> String {
    path.parent().unwrap().display().to_string()
}

fn kind<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents
        .iter()
        .find(|document| document["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifests"))
}

#[test]
fn kubernetes_manifests_match_the_configuration_they_carry() {
    let documents = yaml_documents("kubernetes/o365-connector.yaml");
    let config_text = kind(&documents, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap();
    let secret_keys: Vec<String> = kind(&documents, "Secret")["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let env: Vec<(String, String)> = secret_keys
        .iter()
        .map(|key| (key.clone(), "a-secret-value".to_string()))
        .collect();
    let config = Config::from_toml_with_env(config_text, env)
        .expect("the ConfigMap's config.toml loads with the Secret's variables");

    let deployment = kind(&documents, "Deployment");
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    let ports: HashMap<&str, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| {
            (
                port["name"].as_str().unwrap(),
                port["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["http"], u64::from(config.server.listen.port()));
    assert_eq!(ports["ops"], u64::from(config.ops.listen.unwrap().port()));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }

    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["run", "--config"]);
    let mounts: HashMap<&str, &str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mount| {
            (
                mount["name"].as_str().unwrap(),
                mount["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(mounts["config"], parent_of(Path::new(args[2])));
    assert_eq!(
        config.store.path.parent(),
        Some(Path::new(mounts["store"])),
        "the PersistentVolumeClaim holds the store, in a directory of its own (the volume's \
         root is root's, and may be open to others: such a store is refused)"
    );
    assert_eq!(mounts["engine-sockets"], parent_of(&config.engine.socket));
    let claim = kind(&documents, "PersistentVolumeClaim");
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");

    let service = kind(&documents, "Service");
    let targets: Vec<&str> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port["targetPort"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["http", "ops"]);
    let ingress = kind(&documents, "Ingress");
    let path = &ingress["spec"]["rules"][0]["http"]["paths"][0];
    assert_eq!(path["path"].as_str().unwrap(), config.server.local_path());
    assert_eq!(path["backend"]["service"]["port"]["name"], "http");
    assert_eq!(
        ingress["spec"]["rules"][0]["host"].as_str(),
        config.server.public_url.as_ref().unwrap().host_str()
    );
}

/// `${NAME:?message}` and `${NAME:-default}` of a compose file, with `values`.
fn substitute(text: &str, values: &HashMap<&str, &str>) -> String {
    let mut result = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        result.push_str(&rest[..start]);
        let end = rest[start..].find('}').unwrap() + start;
        let expression = &rest[start + 2..end];
        let name = expression.split([':', '-', '?']).next().unwrap();
        let default = expression
            .split_once(":-")
            .map_or("", |(_, default)| default);
        result.push_str(values.get(name).copied().unwrap_or(default));
        rest = &rest[end + 1..];
    }
    result.push_str(rest);
    result
}

#[test]
fn compose_trial_run_loads_its_configuration_and_wires_the_ports() {
    let env_example = read("compose/env.example");
    let values = compose_values(&env_example);
    let compose_text = substitute(&read("compose/docker-compose.yml"), &values);
    let compose: Value =
        serde_json::to_value(yaml_serde::from_str::<yaml_serde::Value>(&compose_text).unwrap())
            .unwrap();
    let connector = &compose["services"]["connector"];
    let environment: Vec<(String, String)> = connector["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap().to_string()))
        .collect();
    let config = Config::from_toml_with_env(&read("compose/config.toml"), environment)
        .expect("compose/config.toml loads with the compose environment");
    assert_eq!(config.tenants[0].name, "contoso");
    assert_eq!(
        config.server.public_url.as_ref().unwrap().as_str(),
        "https://o365.example.com/hook"
    );

    let command: Vec<&str> = connector["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    let mounted_config = format!("./config.toml:{}:ro", command[2]);
    let volumes: Vec<&str> = connector["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|volume| volume.as_str().unwrap())
        .collect();
    assert!(volumes.contains(&mounted_config.as_str()), "{volumes:?}");
    assert!(volumes.contains(&format!("store:{}", config.store.path.display()).as_str()));
    let sockets = format!("sockets:{}", parent_of(&config.engine.socket));
    assert!(volumes.contains(&sockets.as_str()));
    let engine = &compose["services"]["engine"];
    assert!(
        engine["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|volume| volume == sockets.as_str())
    );
    let engine_command: Vec<&str> = engine["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    assert_eq!(
        engine_command[..4],
        [
            "emulate",
            "engine",
            "--socket",
            &config.engine.socket.display().to_string()
        ]
    );
    let ops_port = config.ops.listen.unwrap().port();
    assert_eq!(
        connector["ports"][0],
        format!("127.0.0.1:{ops_port}:{ops_port}")
    );

    let subnet = compose["networks"]["o365"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .unwrap();
    assert_eq!(config.server.trusted_proxies[0].to_string(), subnet);
    let caddyfile = read("compose/Caddyfile");
    let upstream = format!("reverse_proxy connector:{}", config.server.listen.port());
    assert_eq!(caddyfile.matches(&upstream).count(), 3, "{caddyfile}");
    assert!(caddyfile.contains(&format!("handle {}/*", config.server.local_path())));
}

#[test]
fn dockerfile_runs_as_non_root_with_the_documented_ports_and_command() {
    let dockerfile = read("Dockerfile");
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(last_stage.contains("USER 65532:65532"), "non-root runtime");
    assert!(last_stage.contains("EXPOSE 8080 9090"));
    assert!(last_stage.contains(r#"CMD ["run", "--config", "/etc/o365-connector/config.toml"]"#));
    assert!(
        dockerfile.matches("\nFROM ").count() + 1 >= 2,
        "multi-stage"
    );
    assert!(dockerfile.contains("cargo build --release --locked"));
}

/// Files the crate's sources embed (`include_str!`/`include_bytes!`), relative to the
/// package root.
fn embedded_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pending = vec![root.join("src")];
    let mut embedded = Vec::new();
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .map(|entry| entry.unwrap().path()),
            );
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for marker in ["include_str!(\"", "include_bytes!(\""] {
            for (index, _) in text.match_indices(marker) {
                let rest = &text[index + marker.len()..];
                let relative = &rest[..rest.find('"').unwrap()];
                let resolved = path.parent().unwrap().join(relative);
                let mut normal = PathBuf::new();
                for component in resolved.strip_prefix(root).unwrap().components() {
                    match component {
                        std::path::Component::ParentDir => {
                            normal.pop();
                        }
                        other => normal.push(other),
                    }
                }
                embedded.push(normal);
            }
        }
    }
    embedded
}

#[test]
fn dockerfile_copies_every_file_the_build_reads() {
    assert_copies_every_file_the_build_reads("Dockerfile");
    assert_copies_every_file_the_build_reads("utmstack/Dockerfile");
}

/// The build stage of `dockerfile` (under deploy/) copies every file the build reads, and
/// its `<Dockerfile>.dockerignore` lets each through.
fn assert_copies_every_file_the_build_reads(dockerfile_path: &str) {
    let dockerfile = read(dockerfile_path);
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .filter(|line| !line.starts_with("--from"))
        .flat_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "proto",
        "src",
        "benches",
    ] {
        assert!(
            copied.contains(&needed),
            "{needed} is not copied: {copied:?}"
        );
    }
    let embedded = embedded_files();
    assert!(!embedded.is_empty());
    for file in embedded {
        assert!(
            copied.iter().any(|source| file.starts_with(source)),
            "{} is embedded by the sources but not copied into the build stage",
            file.display()
        );
    }
    let ignore_path = format!("{dockerfile_path}.dockerignore");
    let ignore = read(&ignore_path);
    for source in &copied {
        let source = source.trim_end_matches('/');
        assert!(
            ignore
                .lines()
                .any(|line| line.trim_end_matches('/') == format!("!{source}")),
            "{source} is filtered out of the build context by {ignore_path}"
        );
    }
}

#[test]
fn utmstack_dockerfile_puts_the_binary_where_the_event_processor_starts_the_o365_plugin() {
    let dockerfile = read("utmstack/Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .collect();
    assert_eq!(
        instructions.first().copied(),
        Some("ARG BASE_IMAGE"),
        "BASE_IMAGE is declared before any FROM, as UTMStack's own Dockerfile does"
    );
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(last_stage.starts_with("${BASE_IMAGE}\n"), "{last_stage}");
    let target = format!(
        "/workdir/plugins/utmstack/{}",
        o365_connector::plugin::PLUGIN_EXECUTABLE_NAME
    );
    assert!(
        last_stage
            .lines()
            .any(|line| line == format!("COPY --from=build /out/o365-connector {target}")),
        "{last_stage}"
    );
    // UTMStack starts the plugin with no arguments: the image must not change how.
    for instruction in ["ENTRYPOINT", "CMD", "USER", "WORKDIR"] {
        assert!(
            !last_stage.lines().any(|line| line.starts_with(instruction)),
            "{instruction} in the EventProcessor stage"
        );
    }
    assert!(dockerfile.contains("cargo build --release --locked --bin o365-connector"));
}

#[test]
fn systemd_unit_is_hardened_and_runs_the_service_with_its_directories() {
    let unit = read("systemd/o365-connector.service");
    let mut settings: HashMap<&str, Vec<&str>> = HashMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a Key=Value line: {line}"));
        settings.entry(key).or_default().push(value);
    }
    let one =
        |key: &str| -> &str { settings.get(key).unwrap_or_else(|| panic!("{key} missing"))[0] };
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/o365-connector run --config /etc/o365-connector/config.toml"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("ConfigurationDirectory"), "o365-connector");
    assert_eq!(one("StateDirectory"), "o365-connector");
    let example = Config::load_with_env(
        &deploy("config.example.toml"),
        secrets(&["O365_WEBHOOK_SECRET", "CONTOSO_SECRET"]),
    )
    .unwrap();
    assert_eq!(example.store.path, Path::new("/var/lib/o365-connector"));
    assert_eq!(
        one("ReadWritePaths"),
        format!("-{}", parent_of(&example.engine.socket))
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    let stop: u64 = one("TimeoutStopSec").parse().unwrap();
    assert!(stop > example.ops.shutdown_secs.get(), "room for the drain");
}

#[test]
fn nginx_site_proxies_the_webhook_path_to_the_plain_listener() {
    let site = read("nginx/o365-connector.conf");
    assert!(site.contains("ssl_protocols TLSv1.2 TLSv1.3;"));
    assert!(site.contains("location /hook/ {"));
    assert!(site.contains("server 127.0.0.1:8080;"));
    assert!(site.contains("listen = \"127.0.0.1:8080\""));
    assert!(site.contains("proxy_set_header X-Forwarded-For"));
    assert!(site.contains("location = /healthz") && site.contains("location = /readyz"));
}

/// The document of `kind` whose `metadata.name` is `name`.
fn named<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|document| document["kind"] == kind && document["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifests"))
}

/// Whether every label of `selector` (a map of label to value) is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a label selector");
    !selector.is_empty()
        && selector
            .iter()
            .all(|(label, value)| labels[label.as_str()] == *value)
}

/// The entry of a list of named things (ports, volumes, env) called `name`.
fn entry<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("no list to find {name} in"))
        .iter()
        .find(|item| item["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

fn string_list(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|item| item.as_str().unwrap())
        .collect()
}

/// The body of the `name { ... }` block of a NATS server configuration (blocks not nested).
fn nats_block<'a>(conf: &'a str, name: &str) -> &'a str {
    let start = conf
        .find(&format!("{name} {{"))
        .unwrap_or_else(|| panic!("no {name} block in {conf}"));
    let body = &conf[start..];
    let end = body
        .lines()
        .take_while(|line| line.trim() != "}")
        .map(|line| line.len() + 1)
        .sum::<usize>();
    &body[..end]
}

/// Whether `affinity` / `topologySpreadConstraints` of `pod` keep the pods labelled `labels`
/// on different nodes (preferred or required).
fn spreads_over_nodes(pod: &Value, labels: &Value) -> bool {
    let anti_affinity = &pod["affinity"]["podAntiAffinity"];
    let preferred = anti_affinity["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|weighted| &weighted["podAffinityTerm"]);
    let required = anti_affinity["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten();
    let spread = pod["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten();
    preferred.chain(required).chain(spread).any(|term| {
        term["topologyKey"] == "kubernetes.io/hostname"
            && selects(&term["labelSelector"]["matchLabels"], labels)
    })
}

/// The connector configuration of the NATS manifest as its pod `pod_name` loads it: the
/// ConfigMap the Deployment mounts, with the variables of the Secret it imports and its name
/// (which the Deployment sets as the replica id).
fn kubernetes_nats_config(documents: &[Value], pod_name: &str) -> Config {
    let pod = &named(documents, "Deployment", "o365-connector")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let config_map_name = entry(&pod["volumes"], "config")["configMap"]["name"]
        .as_str()
        .unwrap();
    let config_text = named(documents, "ConfigMap", config_map_name)["data"]["config.toml"]
        .as_str()
        .unwrap();
    let secret_name = container["envFrom"][0]["secretRef"]["name"]
        .as_str()
        .unwrap();
    let mut env: Vec<(String, String)> = named(documents, "Secret", secret_name)["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .map(|key| (key.clone(), "a-secret-value".to_string()))
        .collect();
    env.push((
        "O365_CONNECTOR__STORE__NATS__REPLICA_ID".to_string(),
        pod_name.to_string(),
    ));
    Config::from_toml_with_env(config_text, env)
        .expect("the ConfigMap's config.toml loads with the Secret's variables and a pod name")
}

#[test]
fn kubernetes_nats_manifest_runs_three_connector_replicas_one_per_node() {
    use o365_connector::config::StoreBackendKind;

    let documents = yaml_documents("kubernetes/o365-connector-nats.yaml");
    let deployment = named(&documents, "Deployment", "o365-connector");
    let pod = &deployment["spec"]["template"]["spec"];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let container = &pod["containers"][0];

    let replica_id = entry(&container["env"], "O365_CONNECTOR__STORE__NATS__REPLICA_ID");
    assert_eq!(
        replica_id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "each replica is named after its pod"
    );
    let pod_name = "o365-connector-5c9f8d7b6d-x7k2p";
    let config = kubernetes_nats_config(&documents, pod_name);
    assert_eq!(config.store.backend, StoreBackendKind::Nats);
    let nats = config.store.nats.as_ref().unwrap();
    assert_eq!(nats.replica_id.as_deref(), Some(pod_name));
    assert_eq!(nats.stream_replicas, 3);

    // The connector: three replicas, rolled one by one, spread over the nodes.
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let single = yaml_documents("kubernetes/o365-connector.yaml");
    let single_deployment = named(&single, "Deployment", "o365-connector");
    assert_eq!(
        deployment["spec"]["selector"], single_deployment["spec"]["selector"],
        "a Deployment's selector is immutable: this one must apply over the single-replica one"
    );
    assert!(
        spreads_over_nodes(pod, pod_labels),
        "the replicas spread over the nodes: {pod}"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        entry(&container["ports"], "http")["containerPort"],
        u64::from(config.server.listen.port())
    );
    assert_eq!(
        entry(&container["ports"], "ops")["containerPort"],
        u64::from(config.ops.listen.unwrap().port())
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }

    let args = string_list(&container["args"]);
    assert_eq!(args[..2], ["run", "--config"]);
    let mount = |name: &str| {
        entry(&container["volumeMounts"], name)["mountPath"]
            .as_str()
            .unwrap()
    };
    assert_eq!(mount("config"), parent_of(Path::new(args[2])));
    assert_eq!(Path::new(mount("store")), config.store.path);
    assert!(
        entry(&pod["volumes"], "store")["emptyDir"].is_object(),
        "nothing durable in the store directory with NATS"
    );
    assert_eq!(mount("engine-sockets"), parent_of(&config.engine.socket));
    let engine_sockets = &entry(&pod["volumes"], "engine-sockets")["hostPath"];
    assert_eq!(
        engine_sockets,
        &entry(
            &single_deployment["spec"]["template"]["spec"]["volumes"],
            "engine-sockets"
        )["hostPath"],
        "each replica forwards to its own node's engine, where the single replica does"
    );
    assert!(
        !documents
            .iter()
            .any(|document| document["kind"] == "PersistentVolumeClaim"),
        "no claim for the connector: its state is in NATS"
    );

    let budget = named(&documents, "PodDisruptionBudget", "o365-connector");
    assert!(selects(
        &budget["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let min_available = budget["spec"]["minAvailable"].as_u64().unwrap();
    assert_eq!(min_available, 2);
    assert!(
        min_available < deployment["spec"]["replicas"].as_u64().unwrap(),
        "drains can proceed"
    );

    let service = named(&documents, "Service", "o365-connector");
    assert!(selects(&service["spec"]["selector"], pod_labels));
    let ingress = kind(&documents, "Ingress");
    let path = &ingress["spec"]["rules"][0]["http"]["paths"][0];
    assert_eq!(path["path"].as_str().unwrap(), config.server.local_path());
    assert_eq!(path["backend"]["service"]["name"], "o365-connector");
    assert_eq!(path["backend"]["service"]["port"]["name"], "http");
}

#[test]
fn kubernetes_nats_manifest_runs_a_jetstream_cluster_the_connector_reaches() {
    let documents = yaml_documents("kubernetes/o365-connector-nats.yaml");
    let config = kubernetes_nats_config(&documents, "o365-connector-5c9f8d7b6d-x7k2p");
    let nats = config.store.nats.as_ref().unwrap();
    let budget = named(&documents, "PodDisruptionBudget", "o365-connector");
    let service = named(&documents, "Service", "o365-connector");

    // NATS: three servers, JetStream on file storage, each routed to all the others.
    let statefulset = named(&documents, "StatefulSet", "nats");
    let nats_name = statefulset["metadata"]["name"].as_str().unwrap();
    let nats_replicas = statefulset["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(nats_replicas, 3);
    assert!(nats.stream_replicas as u64 <= nats_replicas);
    assert_eq!(
        statefulset["spec"]["podManagementPolicy"], "Parallel",
        "a JetStream cluster needs its quorum before any server is healthy"
    );
    let nats_pod = &statefulset["spec"]["template"]["spec"];
    let nats_labels = &statefulset["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &statefulset["spec"]["selector"]["matchLabels"],
        nats_labels
    ));
    assert!(
        !selects(&budget["spec"]["selector"]["matchLabels"], nats_labels),
        "the connector's budget does not count the NATS servers"
    );
    assert!(!selects(&service["spec"]["selector"], nats_labels));
    let nats_container = &nats_pod["containers"][0];
    let nats_port = |name: &str| {
        entry(&nats_container["ports"], name)["containerPort"]
            .as_u64()
            .unwrap()
    };
    let nats_config_map = entry(&nats_pod["volumes"], "config")["configMap"]["name"]
        .as_str()
        .unwrap();
    let conf = named(&documents, "ConfigMap", nats_config_map)["data"]["nats.conf"]
        .as_str()
        .unwrap();
    let conf_mount = entry(&nats_container["volumeMounts"], "config")["mountPath"]
        .as_str()
        .unwrap();
    let command = string_list(&nats_container["command"]);
    assert_eq!(
        command,
        [
            "nats-server",
            "--config",
            &format!("{conf_mount}/nats.conf")
        ]
    );
    assert!(conf.contains("server_name: $SERVER_NAME"));
    assert_eq!(
        entry(&nats_container["env"], "SERVER_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert!(conf.contains(&format!("\nlisten: 0.0.0.0:{}\n", nats_port("client"))));
    let jetstream = nats_block(conf, "jetstream");
    let store_dir = jetstream
        .lines()
        .find_map(|line| line.trim().strip_prefix("store_dir: "))
        .expect("JetStream keeps its files in store_dir");
    let claim = &statefulset["spec"]["volumeClaimTemplates"][0];
    let data_mount = entry(
        &nats_container["volumeMounts"],
        claim["metadata"]["name"].as_str().unwrap(),
    )["mountPath"]
        .as_str()
        .unwrap();
    assert!(
        Path::new(store_dir).starts_with(data_mount),
        "{store_dir} is on the claimed volume {data_mount}"
    );
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");
    let headless_name = statefulset["spec"]["serviceName"].as_str().unwrap();
    let headless = named(&documents, "Service", headless_name);
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    assert!(selects(&headless["spec"]["selector"], nats_labels));
    let cluster = nats_block(conf, "cluster");
    assert!(cluster.contains(&format!("listen: 0.0.0.0:{}", nats_port("cluster"))));
    for ordinal in 0..nats_replicas {
        let route = format!(
            "nats://{nats_name}-{ordinal}.{headless_name}:{}",
            nats_port("cluster")
        );
        assert!(cluster.contains(&route), "{route} missing from {cluster}");
    }
    assert_eq!(
        nats_container["livenessProbe"]["httpGet"]["port"],
        "monitor"
    );
    assert!(conf.contains(&format!("\nhttp: 0.0.0.0:{}\n", nats_port("monitor"))));
    assert!(spreads_over_nodes(nats_pod, nats_labels));

    // The connector reaches NATS through a Service of this file, on the client port.
    assert!(!nats.urls.is_empty());
    for address in &nats.urls {
        let url = url::Url::parse(address).unwrap();
        assert_eq!(url.scheme(), "nats");
        let service = named(&documents, "Service", url.host_str().unwrap());
        assert!(
            selects(&service["spec"]["selector"], nats_labels),
            "{address}"
        );
        let port = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|port| port["port"].as_u64() == url.port().map(u64::from))
            .unwrap_or_else(|| panic!("{address}: no such port on the Service"));
        assert_eq!(port["targetPort"], "client", "{address}");
    }
}

/// The compose variables of `env.example`, with the blanks a user fills in filled.
fn compose_values(env_example: &str) -> HashMap<&str, &str> {
    let mut values: HashMap<&str, &str> = env_example
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    values.insert("O365_TENANT_ID", "41463f53-8812-40f4-890f-865bf6e35190");
    values.insert("O365_CLIENT_ID", "a1b2c3d4-0000-4000-8000-00000000c11e");
    values.insert("O365_CLIENT_SECRET", "a-client-secret");
    values.insert("O365_WEBHOOK_SECRET", "a-webhook-secret");
    values
}

#[test]
fn compose_nats_trial_runs_three_replicas_behind_caddy_on_one_nats() {
    use o365_connector::config::StoreBackendKind;
    use std::collections::BTreeSet;

    let env_example = read("compose/env.example");
    let values = compose_values(&env_example);
    let compose_text = substitute(&read("compose-nats/docker-compose.yml"), &values);
    let mut compose_yaml = yaml_serde::from_str::<yaml_serde::Value>(&compose_text).unwrap();
    compose_yaml.apply_merge().unwrap();
    let compose = serde_json::to_value(compose_yaml).unwrap();
    let services = compose["services"].as_object().unwrap();
    let connectors: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(name, _)| name.starts_with("connector"))
        .collect();
    assert_eq!(connectors.len(), 3, "three connector replicas");

    let config_toml = read("compose-nats/config.toml");
    let subnet = compose["networks"]["o365"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .unwrap();
    let engine = &compose["services"]["engine"];
    let caddyfile = read("compose-nats/Caddyfile");
    let mut webhook_path = String::new();
    let mut replica_ids = BTreeSet::new();
    let mut ops_host_ports = BTreeSet::new();
    let mut webhook_secrets = BTreeSet::new();
    let mut upstreams = BTreeSet::new();
    for (name, connector) in &connectors {
        let environment: Vec<(String, String)> = connector["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, value)| (name.clone(), value.as_str().unwrap().to_string()))
            .collect();
        webhook_secrets.insert(
            connector["environment"]["O365_WEBHOOK_SECRET"]
                .as_str()
                .unwrap(),
        );
        let config = Config::from_toml_with_env(&config_toml, environment)
            .unwrap_or_else(|error| panic!("{name}: compose-nats/config.toml: {error}"));
        assert_eq!(config.tenants[0].name, "contoso");
        assert_eq!(config.server.trusted_proxies[0].to_string(), subnet);
        assert_eq!(config.store.backend, StoreBackendKind::Nats, "{name}");
        let nats = config.store.nats.as_ref().unwrap();
        assert_eq!(
            nats.stream_replicas, 1,
            "one NATS server cannot hold more copies"
        );
        replica_ids.insert(nats.replica_id.clone().expect("an explicit replica id"));
        for address in &nats.urls {
            let url = url::Url::parse(address).unwrap();
            let server = url.host_str().unwrap();
            let nats_service = &services[server];
            assert!(nats_service["image"].as_str().unwrap().starts_with("nats:"));
            assert!(
                string_list(&nats_service["command"]).contains(&"-js"),
                "JetStream on"
            );
            assert!(
                connector["depends_on"][server].is_object(),
                "{name} waits for {server}"
            );
        }

        let command = string_list(&connector["command"]);
        let volumes = string_list(&connector["volumes"]);
        let mounted_config = format!("./config.toml:{}:ro", command[2]);
        assert!(
            volumes.contains(&mounted_config.as_str()),
            "{name}: {volumes:?}"
        );
        let sockets = format!("sockets:{}", parent_of(&config.engine.socket));
        assert!(volumes.contains(&sockets.as_str()), "{name}: {volumes:?}");
        assert!(
            string_list(&engine["volumes"]).contains(&sockets.as_str()),
            "the engine shares the sockets volume"
        );
        let store = config.store.path.display().to_string();
        assert!(
            !volumes
                .iter()
                .any(|volume| volume.split(':').nth(1) == Some(store.as_str())),
            "{name}: no volume (shared or durable) at the store path"
        );
        assert!(
            string_list(&connector["tmpfs"])
                .iter()
                .any(|tmpfs| tmpfs.split(':').next() == Some(store.as_str())),
            "{name}: the store path is a private tmpfs"
        );
        let engine_command = string_list(&engine["command"]);
        assert_eq!(engine_command[..3], ["emulate", "engine", "--socket"]);
        assert_eq!(Path::new(engine_command[3]), config.engine.socket);

        let ops_port = config.ops.listen.unwrap().port();
        let published = connector["ports"][0].as_str().unwrap();
        let host_port = published
            .strip_prefix("127.0.0.1:")
            .and_then(|rest| rest.strip_suffix(&format!(":{ops_port}")))
            .unwrap_or_else(|| panic!("{name}: ops published on loopback only: {published}"));
        ops_host_ports.insert(host_port.to_string());
        upstreams.insert(format!("{name}:{}", config.server.listen.port()));

        webhook_path = format!("{}/*", config.server.local_path());
    }
    assert_eq!(
        replica_ids.len(),
        3,
        "distinct replica ids: {replica_ids:?}"
    );
    assert_eq!(
        ops_host_ports.len(),
        3,
        "one ops host port each: {ops_host_ports:?}"
    );
    assert_eq!(
        webhook_secrets.len(),
        1,
        "one webhook secret for all replicas"
    );

    let proxies: Vec<&str> = caddyfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("reverse_proxy "))
        .collect();
    assert_eq!(proxies.len(), 1, "one upstream pool: {proxies:?}");
    let proxied: BTreeSet<String> = proxies[0]
        .trim_end_matches('{')
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        proxied, upstreams,
        "Caddy spreads the calls over every replica"
    );
    assert!(caddyfile.contains("lb_policy round_robin"));
    assert!(
        caddyfile.contains("health_uri /readyz") || caddyfile.contains("health_uri /healthz"),
        "a replica that fails its health check leaves the rotation"
    );
    let routed: BTreeSet<&str> = caddyfile
        .lines()
        .find_map(|line| line.trim().strip_prefix("@connector path "))
        .expect("a matcher of what goes to the replicas")
        .split_whitespace()
        .collect();
    assert_eq!(
        routed,
        BTreeSet::from([webhook_path.as_str(), "/healthz", "/readyz"]),
        "the webhook and the probes, nothing else"
    );
    assert!(caddyfile.contains("handle @connector {"));
}

/// The ops port of a Kubernetes manifest's connector pod, and its pod template.
fn kubernetes_ops_port(documents: &[Value]) -> (u64, &Value) {
    let template = &kind(documents, "Deployment")["spec"]["template"];
    let ports = &template["spec"]["containers"][0]["ports"];
    let ops = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|port| port["name"] == "ops")
        .expect("an ops container port");
    (ops["containerPort"].as_u64().unwrap(), template)
}

#[test]
fn prometheus_scrapes_metrics_on_the_private_ops_listener_only() {
    let prometheus: Value = serde_json::to_value(
        yaml_serde::from_str::<yaml_serde::Value>(&read("prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let jobs = prometheus["scrape_configs"].as_array().unwrap();
    let job = |name: &str| {
        jobs.iter()
            .find(|job| job["job_name"] == name)
            .unwrap_or_else(|| panic!("no scrape job {name}"))
    };

    // The static job scrapes the ops.listen of nginx's and the compose trial's configuration.
    let static_job = job("o365-connector");
    assert_eq!(static_job["metrics_path"], "/metrics");
    let target = static_job["static_configs"][0]["targets"][0]
        .as_str()
        .unwrap();
    let site = read("nginx/o365-connector.conf");
    assert!(
        site.contains(&format!("listen = \"{target}\"")),
        "nginx's [ops] listen is the scraped {target}"
    );
    let compose: toml::Value = toml::from_str(&read("compose/config.toml")).unwrap();
    assert!(
        compose["ops"].get("public").is_none(),
        "the compose trial keeps operations private"
    );
    let compose_listen: std::net::SocketAddr =
        compose["ops"]["listen"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        target,
        format!("127.0.0.1:{}", compose_listen.port()),
        "compose publishes ops.listen on the host's loopback"
    );

    // The Kubernetes job keeps the annotated pods' "ops" port, which is ops.listen's.
    let pods_job = job("o365-connector-pods");
    let relabels = pods_job["relabel_configs"].as_array().unwrap();
    assert!(relabels.iter().any(|rule| {
        rule["source_labels"][0] == "__meta_kubernetes_pod_container_port_name"
            && rule["regex"] == "ops"
            && rule["action"] == "keep"
    }));
    for manifest in [
        "kubernetes/o365-connector.yaml",
        "kubernetes/o365-connector-nats.yaml",
    ] {
        let documents = yaml_documents(manifest);
        let (ops_port, template) = kubernetes_ops_port(&documents);
        let annotations = &template["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{manifest}");
        assert_eq!(annotations["prometheus.io/path"], "/metrics", "{manifest}");
        assert_eq!(
            annotations["prometheus.io/port"],
            ops_port.to_string(),
            "{manifest}"
        );
        let config_text = kind(&documents, "ConfigMap")["data"]["config.toml"]
            .as_str()
            .unwrap();
        let config: toml::Value = toml::from_str(config_text).unwrap();
        let listen = config["ops"]["listen"].as_str().unwrap();
        assert!(
            listen.ends_with(&format!(":{ops_port}")),
            "{manifest}: {listen}"
        );
        assert!(
            config["ops"].get("public").is_none(),
            "{manifest}: operations stay private"
        );
    }
}

#[test]
fn public_proxies_route_no_operations_page() {
    for caddyfile in ["compose/Caddyfile", "compose-nats/Caddyfile"] {
        let text = read(caddyfile);
        for path in ["/status", "/metrics"] {
            assert!(
                !text.contains(&format!("handle {path}")),
                "{caddyfile} routes {path}"
            );
        }
        assert!(text.contains("respond 404"), "{caddyfile}: the rest is 404");
    }
    let site = read("nginx/o365-connector.conf");
    for path in ["/status", "/metrics"] {
        assert!(
            !site.contains(&format!("location = {path}")),
            "nginx routes {path}"
        );
        assert!(
            !site.contains(&format!("location {path}")),
            "nginx routes {path}"
        );
    }
    assert!(site.contains("location / { return 404; }"));
    for manifest in [
        "kubernetes/o365-connector.yaml",
        "kubernetes/o365-connector-nats.yaml",
    ] {
        let documents = yaml_documents(manifest);
        let ingress = kind(&documents, "Ingress");
        let paths: Vec<&str> = ingress["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|path| path["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/hook"], "{manifest}: only the webhook is routed");
        let (_, template) = kubernetes_ops_port(&documents);
        let container = &template["spec"]["containers"][0];
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_ne!(
                container[probe]["httpGet"]["port"], "ops",
                "{manifest}: {probe} probes what the load balancer sees"
            );
        }
    }
    let example: toml::Value = toml::from_str(&read("config.example.toml")).unwrap();
    assert_eq!(
        example["ops"]["public"].as_bool(),
        Some(false),
        "the example keeps operations private"
    );
}
