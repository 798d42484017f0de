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
        Path::new(mounts["store"]),
        config.store.path,
        "the PersistentVolumeClaim holds the store"
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
    let mut values: HashMap<&str, &str> = env_example
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    values.insert("O365_TENANT_ID", "41463f53-8812-40f4-890f-865bf6e35190");
    values.insert("O365_CLIENT_ID", "a1b2c3d4-0000-4000-8000-00000000c11e");
    values.insert("O365_CLIENT_SECRET", "a-client-secret");
    values.insert("O365_WEBHOOK_SECRET", "a-webhook-secret");
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
    let dockerfile = read("Dockerfile");
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
    let ignore = read("Dockerfile.dockerignore");
    for source in &copied {
        let source = source.trim_end_matches('/');
        assert!(
            ignore
                .lines()
                .any(|line| line.trim_end_matches('/') == format!("!{source}")),
            "{source} is filtered out of the build context by Dockerfile.dockerignore"
        );
    }
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
