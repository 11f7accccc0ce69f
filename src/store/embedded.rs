//! The embedded default: a private PostgreSQL cluster that `serve` creates under its
//! data directory with the PostgreSQL binaries of the machine, reaches over a Unix
//! socket only, and stops on shutdown. PostgreSQL refuses to run as root, so when
//! the server runs as root the cluster runs as the `postgres` (or `nobody`) user.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Why the embedded cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries found (looked for pg_config and /usr/lib/postgresql/*/bin). \
         Install them, e.g. `sudo apt-get install -y postgresql` on Debian/Ubuntu, \
         or point Passerelle at an existing server with DATABASE_URL"
    )]
    NoBinaries,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// The unprivileged account that owns the cluster when the server runs as root.
#[derive(Debug, Clone, Copy)]
struct Account {
    uid: u32,
    gid: u32,
}

#[derive(Debug)]
pub struct Cluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    account: Option<Account>,
}

/// The superuser role created by initdb; the cluster trusts local socket connections.
pub const SUPERUSER: &str = "postgres";

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let what = what.into();
    move |e| EmbeddedError::Io(what, e)
}

/// The directory of `initdb`, `pg_ctl` and `postgres`.
pub fn find_bin_dir() -> Result<PathBuf, EmbeddedError> {
    let has_server = |dir: &Path| dir.join("initdb").exists() && dir.join("pg_ctl").exists();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, dir)| dir)
        .ok_or(EmbeddedError::NoBinaries)
}

/// uid and gid of a user, from the system's user database (NSS: files, LDAP…).
fn lookup_account(name: &str) -> Option<Account> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer to static
    // storage (or null); it is read at once, before any other call could reuse it.
    // Only the start of the embedded cluster calls it, once.
    unsafe {
        let entry = libc::getpwnam(name.as_ptr());
        entry.as_ref().map(|pw| Account {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Cluster {
    /// Creates the cluster under `base` on first use, starts it if it is not running,
    /// and returns a handle. Blocking: call it from a blocking context.
    pub fn start(base: &Path) -> Result<Cluster, EmbeddedError> {
        let bin_dir = find_bin_dir()?;
        std::fs::create_dir_all(base).map_err(io(format!("creating {}", base.display())))?;
        let base = std::fs::canonicalize(base).map_err(io("resolving the data directory"))?;
        let account = if is_root() {
            lookup_account("postgres").or_else(|| lookup_account("nobody"))
        } else {
            None
        };
        let mut cluster_home = base.join("postgres");
        if let Some(acct) = account {
            if !reachable_by(&base, acct) {
                // The unprivileged account cannot reach the chosen folder (e.g. under
                // /root): keep the cluster in a folder of its own under /tmp instead.
                let fallback = std::env::temp_dir().join(format!(
                    "passerelle-pg-{:x}",
                    fnv1a(base.to_string_lossy().as_bytes())
                ));
                tracing::warn!(
                    data_dir = %base.display(),
                    cluster = %fallback.display(),
                    "the postgres account cannot reach the data directory; using a private folder"
                );
                cluster_home = fallback;
            }
        }
        std::fs::create_dir_all(&cluster_home)
            .map_err(io(format!("creating {}", cluster_home.display())))?;
        std::fs::set_permissions(&cluster_home, std::fs::Permissions::from_mode(0o700))
            .map_err(io("securing the cluster folder"))?;
        if let Some(acct) = account {
            std::os::unix::fs::chown(&cluster_home, Some(acct.uid), Some(acct.gid))
                .map_err(io("handing the cluster folder to the postgres account"))?;
        }
        let cluster = Cluster {
            bin_dir,
            data_dir: cluster_home.join("data"),
            account,
        };
        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.init()?;
        }
        cluster.ensure_running()?;
        Ok(cluster)
    }

    /// Starts the postmaster if it is not running (first start, or after it died):
    /// true when it had to.
    pub fn ensure_running(&self) -> Result<bool, EmbeddedError> {
        if self.is_running() {
            return Ok(false);
        }
        self.write_settings()?;
        let log = self
            .data_dir
            .parent()
            .unwrap_or(Path::new("/"))
            .join("postgres.log");
        self.run(
            "pg_ctl start",
            Command::new(self.bin_dir.join("pg_ctl"))
                .arg("start")
                .arg("-w")
                .args(["-t", "60"])
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(log),
        )?;
        Ok(true)
    }

    fn init(&self) -> Result<(), EmbeddedError> {
        self.run(
            "initdb",
            Command::new(self.bin_dir.join("initdb"))
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale"]),
        )?;
        let conf = self.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(io("reading postgresql.conf"))?;
        text.push_str("\n# Passerelle's settings, rewritten at every start\ninclude_if_exists = 'passerelle.conf'\n");
        std::fs::write(&conf, text).map_err(io("writing postgresql.conf"))
    }

    /// The settings of the embedded cluster, written before every start so that a
    /// new version of Passerelle applies its own to an existing cluster.
    fn write_settings(&self) -> Result<(), EmbeddedError> {
        let settings = format!(
            "# Written by Passerelle at each start; edit postgresql.auto.conf to override.\n\
             # Unix socket only, in the data folder: no port to collide with another server.\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             # Local disks are SSDs nowadays: index lookups cost little more than scans.\n\
             random_page_cost = 1.1\n\
             effective_cache_size = '1GB'\n",
            self.data_dir.display().to_string().replace('\'', "''")
        );
        let path = self.data_dir.join("passerelle.conf");
        std::fs::write(&path, settings).map_err(io("writing passerelle.conf"))?;
        if let Some(acct) = self.account {
            std::os::unix::fs::chown(&path, Some(acct.uid), Some(acct.gid))
                .map_err(io("handing passerelle.conf to the postgres account"))?;
        }
        Ok(())
    }

    fn is_running(&self) -> bool {
        Command::new(self.bin_dir.join("pg_ctl"))
            .arg("status")
            .arg("-D")
            .arg(&self.data_dir)
            .as_account(self.account)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn run(&self, what: &str, cmd: &mut Command) -> Result<Output, EmbeddedError> {
        let out = cmd
            .as_account(self.account)
            .current_dir(self.data_dir.parent().unwrap_or(Path::new("/")))
            .output()
            .map_err(io(what))?;
        if out.status.success() {
            return Ok(out);
        }
        let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if detail.is_empty() {
            detail = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        Err(EmbeddedError::Command {
            what: what.to_owned(),
            detail,
        })
    }

    /// Connection settings for the superuser, over the cluster's socket.
    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.data_dir)
            .user(SUPERUSER)
            .dbname(dbname);
        config
    }

    /// Stops the cluster (fast shutdown: sessions end, data is flushed).
    pub fn stop(&self) {
        let result = self.run(
            "pg_ctl stop",
            Command::new(self.bin_dir.join("pg_ctl"))
                .arg("stop")
                .args(["-w", "-m", "fast"])
                .arg("-D")
                .arg(&self.data_dir),
        );
        if let Err(e) = result {
            tracing::warn!(error = %e, "stopping the embedded PostgreSQL");
        }
    }
}

trait AsAccount {
    fn as_account(&mut self, account: Option<Account>) -> &mut Self;
}

impl AsAccount for Command {
    fn as_account(&mut self, account: Option<Account>) -> &mut Self {
        if let Some(acct) = account {
            self.uid(acct.uid).gid(acct.gid);
        }
        self
    }
}

/// True when the account can enter `dir` (every folder above it is traversable).
fn reachable_by(dir: &Path, account: Account) -> bool {
    Command::new("test")
        .arg("-x")
        .arg(dir)
        .uid(account.uid)
        .gid(account.gid)
        .status()
        .is_ok_and(|s| s.success())
}

/// A stable short name for a path (not security-relevant).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
