//! The flags that say where the node's pieces are — the store, CRI-O's configuration and
//! drop-in, how to reload CRI-O, its CRI socket, pinbundle's state directory — shared by
//! `load`, `list`, `unpin` and `prune` so that all four find the node the same way.

use std::path::PathBuf;

use clap::Args;

use pinbundle::lifecycle::NodeOptions;
use pinbundle::lifecycle::record::DEFAULT_STATE_DIR;
use pinbundle::load;

/// Where the store is, when not where CRI-O's configuration says.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The store's graph root, overriding CRI-O's `root` (as `crio --root`). [default: CRI-O's
    /// configuration, else storage.conf's `graphroot`, else /var/lib/containers/storage]
    #[arg(long, value_name = "DIR")]
    pub storage_root: Option<PathBuf>,
    /// The store's run root, overriding CRI-O's `runroot`. [default: CRI-O's configuration,
    /// else storage.conf's `runroot`, else /run/containers/storage]
    #[arg(long, value_name = "DIR")]
    pub runroot: Option<PathBuf>,
    /// The storage driver, overriding CRI-O's `storage_driver`. [default: CRI-O's
    /// configuration, else $STORAGE_DRIVER or storage.conf's `driver`, else probed]
    #[arg(long, value_name = "DRIVER", value_parser = ["overlay", "vfs"])]
    pub storage_driver: Option<String>,
    /// The storage.conf containers-storage reads (as CONTAINERS_STORAGE_CONF). [default:
    /// /etc/containers/storage.conf, else /usr/share/containers/storage.conf]
    #[arg(long, value_name = "FILE")]
    pub storage_conf: Option<PathBuf>,
}

impl StoreArgs {
    pub fn flags(&self) -> load::store_config::StoreFlags {
        load::store_config::StoreFlags {
            root: self.storage_root.clone(),
            runroot: self.runroot.clone(),
            driver: self.storage_driver.clone(),
            storage_conf: self.storage_conf.clone(),
        }
    }
}

/// CRI-O's configuration and pinbundle's drop-in in it.
#[derive(Args, Debug, Clone)]
pub struct CrioArgs {
    /// CRI-O's main configuration file, read first (as `crio --config`).
    #[arg(long, value_name = "FILE", default_value = load::crio_config::DEFAULT_CONFIG)]
    pub crio_config: PathBuf,
    /// CRI-O's drop-in directory, every file read after the main one (as `crio --config-dir`).
    #[arg(long, value_name = "DIR", default_value = load::crio_config::DEFAULT_CONFIG_DIR)]
    pub crio_config_dir: PathBuf,
    /// The CRI-O drop-in that holds the pins; it must be the last file of the configuration
    /// that sets `pinned_images`. [default: CRIO_CONFIG_DIR/50-pinned-images]
    #[arg(long, value_name = "FILE")]
    pub crio_drop_in: Option<PathBuf>,
}

impl CrioArgs {
    pub fn drop_in(&self) -> PathBuf {
        self.crio_drop_in
            .clone()
            .unwrap_or_else(|| self.crio_config_dir.join(load::run::DROP_IN_NAME))
    }
}

/// How CRI-O is made to re-read its configuration.
#[derive(Args, Debug, Clone)]
pub struct ReloadArgs {
    /// How to make CRI-O re-read its configuration: `auto` = systemd when it runs CRI-O, else
    /// SIGHUP to the crio process, and `systemctl restart crio` on releases whose reload
    /// mishandles pins (1.28.0–1.29.6, 1.30.0–1.30.2); `restart` always restarts; `none`
    /// prints what to run.
    #[arg(long, value_enum, default_value_t = ReloadArg::Auto)]
    pub reload: ReloadArg,
    /// The systemctl program (tests).
    #[arg(long, value_name = "PROGRAM", default_value = "systemctl", hide = true)]
    pub systemctl: PathBuf,
    /// Signal this CRI-O process instead of looking for it in /proc (tests: other `crio`
    /// processes may run on the host).
    #[arg(long, value_name = "PID", hide = true)]
    pub crio_pid: Option<i32>,
    /// Exists when systemd runs the node (tests).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/systemd/system",
        hide = true
    )]
    pub systemd_marker: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ReloadArg {
    Auto,
    Systemd,
    Signal,
    Restart,
    None,
}

impl ReloadArgs {
    pub fn mode(&self) -> load::reload::ReloadMode {
        match self.reload {
            ReloadArg::Auto => load::reload::ReloadMode::Auto,
            ReloadArg::Systemd => load::reload::ReloadMode::Systemd,
            ReloadArg::Signal => load::reload::ReloadMode::Signal,
            ReloadArg::Restart => load::reload::ReloadMode::Restart,
            ReloadArg::None => load::reload::ReloadMode::None,
        }
    }

    pub fn env(&self) -> load::reload::ReloadEnv {
        load::reload::ReloadEnv {
            systemctl: self.systemctl.clone(),
            systemd_marker: self.systemd_marker.clone(),
            pid: self.crio_pid,
            ..load::reload::ReloadEnv::default()
        }
    }
}

/// CRI-O's CRI socket.
#[derive(Args, Debug, Clone)]
pub struct CriArgs {
    /// CRI-O's CRI socket, asked to confirm the images are present and pinned.
    #[arg(long, value_name = "SOCKET", default_value = load::DEFAULT_CRI_SOCKET)]
    pub cri_socket: PathBuf,
    /// How long to wait for CRI-O to confirm, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub confirm_timeout: u64,
}

/// pinbundle's own state.
#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// Where pinbundle keeps the record of the images it loaded (`loaded.json`), which
    /// `list` and `prune` read.
    #[arg(long, value_name = "DIR", env = "PINBUNDLE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// The node's pieces, as `list`, `unpin` and `prune` take them.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub crio: CrioArgs,
    #[command(flatten)]
    pub cri: CriArgs,
    #[command(flatten)]
    pub state: StateArgs,
}

impl NodeArgs {
    pub fn options(&self) -> NodeOptions {
        NodeOptions {
            store: self.store.flags(),
            crio_config: self.crio.crio_config.clone(),
            crio_config_dir: self.crio.crio_config_dir.clone(),
            drop_in: self.crio.drop_in(),
            cri_socket: self.cri.cri_socket.clone(),
            timeout: std::time::Duration::from_secs(self.cri.confirm_timeout),
            state_dir: self.state.state_dir.clone(),
        }
    }
}
