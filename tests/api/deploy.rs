//! `deploy/` as far as it can be checked without pulling images: the compose
//! file, the collector's configuration and the Helm chart parse; every setting
//! they (and the Dockerfile) give Passerelle is a real setting of `passerelle
//! serve`; the chart's templates use only values that exist. (The nginx
//! configuration is run for real by `proxy.rs`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    let mut docs =
        YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"));
    assert_eq!(docs.len(), 1, "deploy/{path} holds one document");
    docs.remove(0)
}

/// The environment variables `passerelle serve` reads, from its own help, plus
/// those read outside the command line (logs and traces).
fn serve_settings() -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(["serve", "--help"])
        .output()
        .expect("passerelle serve --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let mut names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect();
    assert!(names.contains("PASSERELLE_LISTEN"), "{help}");
    names.extend(["RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT"].map(str::to_owned));
    names
}

fn keys(map: &Yaml) -> Vec<String> {
    map.as_hash()
        .map(|h| {
            h.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_real_settings(names: &[String], whence: &str) {
    let settings = serve_settings();
    assert!(!names.is_empty(), "{whence} sets nothing");
    for name in names {
        assert!(
            settings.contains(name),
            "{whence} sets {name}, which `passerelle serve` does not read"
        );
    }
}

#[test]
fn the_compose_file_runs_two_instances_with_real_settings() {
    let compose = yaml("compose.yaml");
    let services = &compose["services"];
    for name in [
        "postgres",
        "passerelle-1",
        "passerelle-2",
        "nginx",
        "otel-collector",
        "jaeger",
    ] {
        assert!(!services[name].is_badvalue(), "service {name}");
    }
    // The instances are one anchor merged in (`<<: *passerelle`, which the
    // parser leaves as a key): its settings are theirs.
    let instance = |name: &str| services[name]["<<"].clone();
    assert_eq!(instance("passerelle-1"), instance("passerelle-2"));
    let environment = &instance("passerelle-1")["environment"];
    assert_real_settings(&keys(environment), "deploy/compose.yaml");
    assert_eq!(
        services["nginx"]["volumes"][0].as_str(),
        Some("./nginx.conf:/etc/nginx/nginx.conf:ro")
    );
    let collector = yaml("otel-collector.yaml");
    assert!(!collector["service"]["pipelines"]["traces"].is_badvalue());
    assert!(environment["OTEL_EXPORTER_OTLP_ENDPOINT"]
        .as_str()
        .is_some_and(|e| e.ends_with(":4318")));
}

#[test]
fn the_dockerfile_ships_the_binary_and_profiles_unprivileged() {
    let dockerfile = read("Dockerfile");
    let env: Vec<String> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .filter_map(|l| l.split('=').next())
        .map(str::to_owned)
        .collect();
    assert_real_settings(&env, "deploy/Dockerfile");
    for source in dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len().saturating_sub(1)].to_vec()
        })
    {
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(source).exists(),
            "the Dockerfile copies {source}, which the repository lacks"
        );
    }
    assert!(dockerfile.contains("USER passerelle"));
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/health/live"));
    assert!(dockerfile.contains("COPY profiles "));
}

/// Every `.Values.a.b` a template reads.
fn values_read(template: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for (i, _) in template.match_indices(".Values.") {
        let path: String = template[i + ".Values.".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
            .collect();
        paths.insert(path.trim_end_matches('.').to_owned());
    }
    paths
}

#[test]
fn the_helm_chart_parses_and_its_templates_read_real_values() {
    let chart = yaml("helm/passerelle/Chart.yaml");
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart["name"].as_str(), Some("passerelle"));
    let values = yaml("helm/passerelle/values.yaml");
    assert_real_settings(&keys(&values["config"]), "the chart's values.config");
    let templates = deploy("helm/passerelle/templates");
    let mut kinds = BTreeSet::new();
    for entry in std::fs::read_dir(&templates).expect("templates") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("template");
        let name = path.display().to_string();
        assert_eq!(
            text.matches("{{").count(),
            text.matches("}}").count(),
            "{name}: unbalanced template actions"
        );
        for path in values_read(&text) {
            let found = path
                .split('.')
                .try_fold(&values, |node, key| match &node[key] {
                    Yaml::BadValue => None,
                    child => Some(child),
                });
            assert!(
                found.is_some(),
                "{name} reads .Values.{path}, which values.yaml lacks"
            );
        }
        if let Some(kind) = text.lines().find_map(|l| l.strip_prefix("kind: ")) {
            kinds.insert(kind.trim().to_owned());
        }
    }
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
    ] {
        assert!(kinds.contains(kind), "the chart has no {kind}");
    }
    let deployment =
        std::fs::read_to_string(templates.join("deployment.yaml")).expect("deployment");
    assert!(
        deployment.contains("path: /health/live") && deployment.contains("path: /health/ready")
    );
    assert!(
        deployment.contains("secretKeyRef")
            || read("helm/passerelle/templates/_helpers.tpl").contains("secretKeyRef")
    );
}
