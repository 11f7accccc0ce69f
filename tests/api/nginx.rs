//! nginx running `deploy/nginx.conf` as the repository has it, in front of
//! instances the caller started: shared by the tests (`proxy`, `outages`) and the
//! proxy benchmark (`benches/passerelle/proxy.rs`, which includes this file).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nginx, when installed (CI installs it; elsewhere the test says so and passes).
pub fn nginx() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        eprintln!("nginx is not installed: what runs through a real proxy is skipped");
    }
    found
}

pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master stops its workers before it exits
        // (killed, it would leave them running).
        // SAFETY: signalling a child process this test started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `deploy/nginx.conf` as the repository has it, with the test's port, pid file
/// and upstream instances in place of the compose file's.
fn proxy_config(port: u16, dir: &Path, upstreams: &[String]) -> String {
    let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf"))
        .expect("deploy/nginx.conf");
    let mut servers = Vec::new();
    let mut out = Vec::new();
    for line in conf.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server passerelle-") {
            servers.push(line);
            if servers.len() == 1 {
                for upstream in upstreams {
                    out.push(format!(
                        "        server {upstream} max_fails=1 fail_timeout=5s;"
                    ));
                }
            }
        } else if trimmed == "listen 8080;" {
            out.push(format!("        listen 127.0.0.1:{port};"));
        } else if trimmed.starts_with("pid ") {
            out.push(format!("pid {}/nginx.pid;", dir.display()));
        } else {
            out.push(line.to_owned());
        }
    }
    assert_eq!(servers.len(), 2, "deploy/nginx.conf names two instances");
    out.join("\n")
}

/// nginx running `deploy/nginx.conf` in front of `upstreams` (`host:port`).
pub async fn start_nginx(binary: &Path, upstreams: &[String]) -> Nginx {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("nginx-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("nginx folder");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, proxy_config(port, &dir, upstreams)).expect("write nginx.conf");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&dir)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    let nginx = Nginx { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nginx did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nginx
}
