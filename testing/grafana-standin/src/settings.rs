//! Settings: Grafana's configuration layering and the typed view of the keys the stand-in honours.
//!
//! Layering follows grafana/grafana `pkg/setting/setting.go` (`loadConfiguration`), lowest first:
//! 1. built-in defaults (a subset of `conf/defaults.ini`), merged with `<homepath>/conf/defaults.ini`
//!    when that file exists (a real tarball layout);
//! 2. command-line `cfg:default.<section>.<key>=<value>` arguments;
//! 3. the ini file given by `--config` (else `<homepath>/conf/custom.ini` when it exists);
//! 4. environment `GF_<SECTION>_<KEY>` (upper-cased, `.` and `-` become `_`), only for keys that
//!    exist after steps 1-3, exactly as Grafana iterates its loaded keys; plus the Docker image's
//!    `GF_<SECTION>_<KEY>__FILE=/path` convention (`packaging/docker/run.sh`);
//! 5. command-line `cfg:<section>.<key>=<value>` arguments;
//! 6. value expansion: `$__env{NAME}`, `$__file{/path}`, `${NAME}`, and go-ini's `%(key)s`.
//!
//! The ini parser is hand-written rather than `rust-ini` because Grafana's parser (go-ini) has
//! specific rules that matter for secrets: an unquoted value ends at the first `#` or `;`
//! (inline comment), `"""…"""` and backtick values are literal and may span lines, surrounding
//! single/double quotes are trimmed *after* the comment strip, and `%(key)s` interpolates from
//! the same section, its parents, then `DEFAULT`. `rust-ini` differs on several of these.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};

/// Section name go-ini gives to keys that appear before any `[section]`.
pub const DEFAULT_SECTION: &str = "DEFAULT";

/// Version compiled into the stand-in when neither `STANDIN_VERSION` nor `<home>/VERSION` is set.
pub const COMPILED_VERSION: &str = "11.3.0";
/// Value reported as the build commit, in `/api/health` and `--version`.
pub const COMMIT: &str = "standin";

/// An ini document: section → key → raw value. Keys keep their case, as in go-ini.
pub type Ini = BTreeMap<String, BTreeMap<String, String>>;

/// Built-in defaults, taken from Grafana's `conf/defaults.ini` for the keys pug touches, plus
/// the stand-in's own `[standin]` section (test-only failure modes).
const BUILTIN_DEFAULTS: &str = r#"
app_mode = production
instance_name = standin

[paths]
data = data
logs = data/log
plugins = data/plugins
provisioning = conf/provisioning

[server]
protocol = http
http_addr =
http_port = 3000
domain = localhost
enforce_domain = false
root_url = %(protocol)s://%(domain)s:%(http_port)s/
serve_from_sub_path = false
router_logging = false
enable_gzip = false

[database]
type = sqlite3
host = 127.0.0.1:3306
name = grafana
user = root
password =
url =
ssl_mode = disable
path = grafana.db
cache_mode = private

[security]
disable_initial_admin_creation = false
admin_user = admin
admin_password = admin
admin_email = admin@localhost
secret_key = SW2YcwTIb9zpOOhoPsMm
cookie_secure = false
cookie_samesite = lax
allow_embedding = false

[users]
allow_sign_up = false
allow_org_create = false
auto_assign_org = true
auto_assign_org_id = 1
auto_assign_org_role = Viewer

[auth]
login_cookie_name = grafana_session
disable_login_form = false
disable_signout_menu = false
signout_redirect_url =

[auth.anonymous]
enabled = false
hide_version = false

[auth.basic]
enabled = true

[auth.proxy]
enabled = false
header_name = X-WEBAUTH-USER
header_property = username
auto_sign_up = true
sync_ttl = 60
whitelist =
headers =
headers_encoded = false
enable_login_token = false

[auth.jwt]
enabled = false
header_name =
email_claim =
username_claim =
key_file =
expect_claims = {}
role_attribute_path =
role_attribute_strict = false
auto_sign_up = false
url_login = false
allow_assign_grafana_admin = false

[analytics]
reporting_enabled = true
check_for_updates = true
check_for_plugin_updates = true

[plugins]
preinstall =
preinstall_sync =
preinstall_async = true
preinstall_disabled = false
allow_loading_unsigned_plugins =

[rendering]
server_url =
callback_url =
renderer_token = -
concurrent_render_request_limit = 30

[live]
max_connections = 100

[metrics]
enabled = true

[log]
mode = console file
level = info

[standin]
mode = ok
crash_after_ms =
start_delay_ms =
strict_sub_path = true
ignore_sigterm = false
"#;

// ---------------------------------------------------------------------------------------------
// ini parsing (go-ini rules, see module doc)
// ---------------------------------------------------------------------------------------------

/// Parses ini text with go-ini's default rules. Errors name the 1-based line.
pub fn parse_ini(text: &str) -> Result<Ini> {
    let mut ini = Ini::new();
    let mut section = DEFAULT_SECTION.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let lineno = i + 1;
        let line = lines[i].trim();
        i += 1;
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let end = rest
                .find(']')
                .ok_or_else(|| anyhow!("line {lineno}: unclosed section: {line}"))?;
            section = rest[..end].trim().to_string();
            if section.is_empty() {
                bail!("line {lineno}: empty section name");
            }
            ini.entry(section.clone()).or_default();
            continue;
        }
        let delim = line
            .find(['=', ':'])
            .ok_or_else(|| anyhow!("line {lineno}: key-value delimiter not found: {line}"))?;
        let key = line[..delim].trim();
        if key.is_empty() {
            bail!("line {lineno}: empty key");
        }
        let raw = line[delim + 1..].trim_start();
        let value = if let Some(q) = ["\"\"\"", "`"].into_iter().find(|q| raw.starts_with(q)) {
            // Literal value, possibly spanning lines, up to the closing quote.
            let body = &raw[q.len()..];
            if let Some(pos) = body.rfind(q) {
                body[..pos].to_string()
            } else {
                let mut acc = body.to_string();
                loop {
                    let Some(next) = lines.get(i) else {
                        bail!("line {lineno}: unterminated {q} value for key {key}");
                    };
                    i += 1;
                    acc.push('\n');
                    if let Some(pos) = next.find(q) {
                        acc.push_str(&next[..pos]);
                        break acc;
                    }
                    acc.push_str(next);
                }
            }
        } else {
            let mut v = raw;
            if let Some(pos) = v.find(['#', ';']) {
                v = &v[..pos];
            }
            let v = v.trim();
            let quoted = v.len() >= 2
                && ((v.starts_with('"') && v.ends_with('"'))
                    || (v.starts_with('\'') && v.ends_with('\'')));
            if quoted {
                v[1..v.len() - 1].to_string()
            } else {
                v.to_string()
            }
        };
        ini.entry(section.clone())
            .or_default()
            .insert(key.to_string(), value);
    }
    Ok(ini)
}

/// Merges `top` into `base`, later values winning (go-ini `Append`).
fn merge(base: &mut Ini, top: Ini) {
    for (section, keys) in top {
        base.entry(section).or_default().extend(keys);
    }
}

/// `GF_<SECTION>_<KEY>` for a section/key pair, as Grafana computes it.
pub fn env_name(section: &str, key: &str) -> String {
    let norm = |s: &str| s.to_uppercase().replace(['.', '-'], "_");
    if section == DEFAULT_SECTION {
        format!("GF_{}", norm(key))
    } else {
        format!("GF_{}_{}", norm(section), norm(key))
    }
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "secret_key",
        "api_key",
        "renderer_token",
    ]
    .iter()
    .any(|s| k.ends_with(s))
}

/// What the layering did, for the settings report and log lines.
#[derive(Debug, Default, Clone)]
pub struct Provenance {
    /// Config files read, in order.
    pub files: Vec<PathBuf>,
    /// Environment variables that overrode a value (names only).
    pub env: Vec<String>,
    /// Command-line `cfg:` properties that were applied (names only).
    pub args: Vec<String>,
}

/// Inputs to [`load`]; `env` is a snapshot so tests can call it without touching the process.
pub struct LoadInput<'a> {
    pub home: &'a Path,
    pub config: Option<&'a Path>,
    pub cfg_args: &'a [String],
    pub env: &'a HashMap<String, String>,
}

/// Splits `section.key` at its last dot (sections may contain dots, e.g. `auth.proxy.enabled`).
fn split_prop(prop: &str) -> Option<(&str, &str)> {
    let (s, k) = prop.rsplit_once('.')?;
    (!s.is_empty() && !k.is_empty()).then_some((s, k))
}

/// Runs the whole layering (steps 1-6 in the module doc) and returns the final ini.
pub fn load(input: &LoadInput<'_>) -> Result<(Ini, Provenance)> {
    let mut prov = Provenance::default();
    let mut ini = parse_ini(BUILTIN_DEFAULTS).expect("built-in defaults parse");
    let defaults_file = input.home.join("conf/defaults.ini");
    if defaults_file.is_file() {
        let text = std::fs::read_to_string(&defaults_file)
            .with_context(|| format!("failed to read {}", defaults_file.display()))?;
        let parsed = parse_ini(&text)
            .with_context(|| format!("failed to parse {}", defaults_file.display()))?;
        merge(&mut ini, parsed);
        prov.files.push(defaults_file);
    }

    // cfg:default.x.y=v and cfg:x.y=v
    let mut default_props = Vec::new();
    let mut props = Vec::new();
    for arg in input.cfg_args {
        let Some(rest) = arg.strip_prefix("cfg:") else {
            continue;
        };
        let Some((name, value)) = rest.split_once('=') else {
            bail!("invalid command line property {arg:?}: expected cfg:section.key=value");
        };
        match name.strip_prefix("default.") {
            Some(n) => default_props.push((n.to_string(), value.to_string())),
            None => props.push((name.to_string(), value.to_string())),
        }
    }
    let apply_props = |ini: &mut Ini, props: &[(String, String)], prov: &mut Provenance| {
        for (name, value) in props {
            match split_prop(name) {
                Some((s, k)) => {
                    ini.entry(s.to_string())
                        .or_default()
                        .insert(k.to_string(), value.clone());
                    prov.args.push(format!("cfg:{name}"));
                }
                None => {
                    ini.entry(DEFAULT_SECTION.to_string())
                        .or_default()
                        .insert(name.clone(), value.clone());
                    prov.args.push(format!("cfg:{name}"));
                }
            }
        }
    };
    apply_props(&mut ini, &default_props, &mut prov);

    let config = match input.config {
        Some(p) => Some(p.to_path_buf()),
        None => Some(input.home.join("conf/custom.ini")).filter(|p| p.is_file()),
    };
    if let Some(path) = config {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read config file {}", path.display()))?;
        let parsed =
            parse_ini(&text).with_context(|| format!("failed to parse {}", path.display()))?;
        merge(&mut ini, parsed);
        prov.files.push(path);
    }

    // Environment: only keys that exist, like Grafana's applyEnvVariableOverrides.
    for (section, keys) in ini.iter_mut() {
        for (key, value) in keys.iter_mut() {
            let name = env_name(section, key);
            let file_var = format!("{name}__FILE");
            match (input.env.get(&name), input.env.get(&file_var)) {
                (Some(_), Some(_)) => {
                    bail!("both {name} and {file_var} are set (but are exclusive)")
                }
                (Some(v), None) if !v.is_empty() => {
                    *value = v.clone();
                    prov.env.push(name);
                }
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("{file_var}: failed to read {path}"))?;
                    *value = text.trim_end_matches(['\n', '\r']).to_string();
                    prov.env.push(file_var);
                }
                _ => {}
            }
        }
    }

    apply_props(&mut ini, &props, &mut prov);
    let ini = expand(&ini, input.env)?;
    Ok((ini, prov))
}

/// Step 6: `%(key)s` interpolation, then `$__env{}`, `$__file{}` and `${}` expansion.
fn expand(ini: &Ini, env: &HashMap<String, String>) -> Result<Ini> {
    let mut out = Ini::new();
    for (section, keys) in ini {
        let mut new_keys = BTreeMap::new();
        for (key, value) in keys {
            let v = interpolate(ini, section, value);
            let v = expand_vars(&v, env)
                .with_context(|| format!("failed to expand [{section}] {key}"))?;
            new_keys.insert(key.clone(), v);
        }
        out.insert(section.clone(), new_keys);
    }
    Ok(out)
}

fn lookup<'a>(ini: &'a Ini, section: &str, key: &str) -> Option<&'a String> {
    let mut s = section;
    loop {
        if let Some(v) = ini.get(s).and_then(|k| k.get(key)) {
            return Some(v);
        }
        match s.rsplit_once('.') {
            Some((parent, _)) => s = parent,
            None => break,
        }
    }
    ini.get(DEFAULT_SECTION).and_then(|k| k.get(key))
}

/// go-ini's `%(name)s` interpolation (depth-limited, unknown names left as is).
fn interpolate(ini: &Ini, section: &str, value: &str) -> String {
    let mut v = value.to_string();
    for _ in 0..99 {
        let mut changed = false;
        let mut out = String::with_capacity(v.len());
        let mut rest = v.as_str();
        while let Some(start) = rest.find("%(") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find(")s") {
                Some(end)
                    if after[..end]
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_') =>
                {
                    let name = &after[..end];
                    match lookup(ini, section, name) {
                        Some(val) => {
                            out.push_str(val);
                            changed = true;
                        }
                        None => out.push_str(&rest[start..start + 2 + end + 2]),
                    }
                    rest = &after[end + 2..];
                }
                _ => {
                    out.push_str("%(");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        v = out;
        if !changed {
            break;
        }
    }
    v
}

/// Grafana's `expandConfig`: `$__env{NAME}`, `$__file{path}` and `${NAME}`.
fn expand_vars(value: &str, env: &HashMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let (consumed, replacement) = if let Some(body) = tail.strip_prefix("$__env{") {
            let end = body.find('}').ok_or_else(|| anyhow!("unclosed $__env{{"))?;
            (
                7 + end + 1,
                env.get(&body[..end]).cloned().unwrap_or_default(),
            )
        } else if let Some(body) = tail.strip_prefix("$__file{") {
            let end = body
                .find('}')
                .ok_or_else(|| anyhow!("unclosed $__file{{"))?;
            let path = &body[..end];
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("$__file{{{path}}}: cannot read"))?;
            (8 + end + 1, text.trim_end_matches(['\n', '\r']).to_string())
        } else if let Some(body) = tail.strip_prefix("${") {
            match body.find('}') {
                Some(end) if body[..end].chars().all(|c| c.is_alphanumeric() || c == '_') => (
                    2 + end + 1,
                    env.get(&body[..end]).cloned().unwrap_or_default(),
                ),
                _ => (1, "$".to_string()),
            }
        } else {
            (1, "$".to_string())
        };
        out.push_str(&replacement);
        rest = &tail[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Typed settings
// ---------------------------------------------------------------------------------------------

/// Test-only behaviour chosen with `[standin] mode` / `GF_STANDIN_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ok,
    Crash,
    Hang,
    UnhealthyDb,
    SlowStart,
}

impl Mode {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "" | "ok" => Mode::Ok,
            "crash" => Mode::Crash,
            "hang" => Mode::Hang,
            "unhealthy_db" => Mode::UnhealthyDb,
            "slow_start" => Mode::SlowStart,
            other => bail!(
                "[standin] mode: unknown value {other:?} (ok|crash|hang|unhealthy_db|slow_start)"
            ),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ok => "ok",
            Mode::Crash => "crash",
            Mode::Hang => "hang",
            Mode::UnhealthyDb => "unhealthy_db",
            Mode::SlowStart => "slow_start",
        }
    }
}

/// An IP network from `[auth.proxy] whitelist` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| anyhow!("could not parse the network: {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| anyhow!("could not parse the network: {s:?}"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `[auth.proxy]`.
#[derive(Debug, Clone)]
pub struct AuthProxy {
    pub enabled: bool,
    pub header_name: String,
    pub header_property: String,
    /// Empty means every address may send the header.
    pub whitelist: Vec<IpNet>,
    /// `Field:Header` pairs from `headers` (`Email`, `Name`, `Role`, `Groups`, `Login`).
    pub headers: Vec<(String, String)>,
    pub auto_assign_org_role: String,
}

/// `[auth.jwt]` (Grafana's `pkg/services/auth/jwt` and `authn/clients/jwt.go`), as far as pug
/// uses it: a PEM `key_file` (the stand-in verifies Ed25519 keys only, `alg: EdDSA`; Grafana
/// also takes RSA and ECDSA), `expect_claims` (string values compared exactly; `exp` is always
/// required and checked, and a token issued in the future is refused, as go-jose does),
/// `username_claim` / `email_claim`, and the org role from a top-level claim named by
/// `role_attribute_path` (a JMESPath in Grafana; a plain claim name here).
#[derive(Debug, Clone)]
pub struct AuthJwt {
    pub enabled: bool,
    pub header_name: String,
    pub username_claim: String,
    pub email_claim: String,
    /// The verifying key read from `key_file` (raw Ed25519 public key bytes).
    pub key: Option<[u8; 32]>,
    pub key_file: String,
    pub expect_claims: Map<String, Value>,
    pub role_attribute_path: String,
    pub role_attribute_strict: bool,
    pub allow_assign_grafana_admin: bool,
    pub auto_sign_up: bool,
}

impl AuthJwt {
    fn load(ini: &Ini) -> Result<Self> {
        let enabled = get_bool(ini, "auth.jwt", "enabled");
        let key_file = get(ini, "auth.jwt", "key_file").trim().to_string();
        let key = if enabled {
            if key_file.is_empty() {
                bail!("key set for jwt verification is not configured");
            }
            let pem = std::fs::read_to_string(&key_file)
                .with_context(|| format!("[auth.jwt] key_file {key_file}"))?;
            Some(
                ed25519_public_key(&pem)
                    .with_context(|| format!("[auth.jwt] key_file {key_file}"))?,
            )
        } else {
            None
        };
        let expect_raw = get(ini, "auth.jwt", "expect_claims").trim();
        let expect_claims = if expect_raw.is_empty() {
            Map::new()
        } else {
            serde_json::from_str(expect_raw)
                .context("[auth.jwt] expect_claims is not a JSON object")?
        };
        Ok(Self {
            enabled,
            header_name: get(ini, "auth.jwt", "header_name").trim().to_string(),
            username_claim: get(ini, "auth.jwt", "username_claim").trim().to_string(),
            email_claim: get(ini, "auth.jwt", "email_claim").trim().to_string(),
            key,
            key_file,
            expect_claims,
            role_attribute_path: get(ini, "auth.jwt", "role_attribute_path")
                .trim()
                .to_string(),
            role_attribute_strict: get_bool(ini, "auth.jwt", "role_attribute_strict"),
            allow_assign_grafana_admin: get_bool(ini, "auth.jwt", "allow_assign_grafana_admin"),
            auto_sign_up: get_bool(ini, "auth.jwt", "auto_sign_up"),
        })
    }
}

/// The raw key of an Ed25519 `PUBLIC KEY` PEM (SubjectPublicKeyInfo: the 12-byte algorithm
/// prefix of id-Ed25519, then the 32 key bytes), as `x509.ParsePKIXPublicKey` reads it.
fn ed25519_public_key(pem: &str) -> Result<[u8; 32]> {
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let body: String = pem
        .lines()
        .skip_while(|l| l.trim() != "-----BEGIN PUBLIC KEY-----")
        .skip(1)
        .take_while(|l| l.trim() != "-----END PUBLIC KEY-----")
        .collect();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| anyhow!("failed to parse PEM file"))?;
    match der.strip_prefix(&SPKI_PREFIX[..]) {
        Some(key) if key.len() == 32 => Ok(key.try_into().expect("32 bytes")),
        _ => bail!("not an Ed25519 PUBLIC KEY (the stand-in verifies EdDSA only)"),
    }
}

/// `[database]`, resolved.
#[derive(Debug, Clone)]
pub enum Database {
    /// sqlite3: the file path (relative paths are under `[paths] data`).
    Sqlite { path: PathBuf },
    /// postgres / mysql: checked with a TCP connect to host:port.
    Network {
        kind: String,
        host: String,
        port: u16,
        name: String,
        user: String,
    },
}

/// `[paths]`, made absolute against the home path.
#[derive(Debug, Clone)]
pub struct Paths {
    pub home: PathBuf,
    pub data: PathBuf,
    pub logs: PathBuf,
    pub plugins: PathBuf,
    pub provisioning: PathBuf,
}

/// `[standin]`: the test-only knobs.
#[derive(Debug, Clone)]
pub struct Standin {
    pub mode: Mode,
    /// Exit 1 after this long (default 0 in `crash` mode, none otherwise).
    pub crash_after: Option<Duration>,
    /// Wait this long before binding (default 3 s in `slow_start` mode, none otherwise).
    pub start_delay: Option<Duration>,
    /// Answer only under the sub path (plus the health/metrics endpoints) when serving from one.
    pub strict_sub_path: bool,
    /// Ignore SIGTERM (SIGINT still stops it), to test stop escalation to SIGKILL.
    pub ignore_sigterm: bool,
}

/// The effective settings the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ini: Ini,
    pub provenance: Provenance,
    pub version: String,
    pub http_addr: String,
    pub http_port: u16,
    /// `root_url`, always with a trailing slash.
    pub app_url: String,
    /// Path of `root_url` without trailing slash (`""` at the root).
    pub app_sub_url: String,
    pub serve_from_sub_path: bool,
    pub hide_version: bool,
    pub auth_proxy: AuthProxy,
    pub auth_jwt: AuthJwt,
    pub basic_auth: bool,
    pub admin_user: String,
    /// `[security] admin_email`: the admin account's email.
    pub admin_email: String,
    pub admin_password: String,
    pub secret_key: String,
    pub allow_sign_up: bool,
    pub database: Database,
    pub paths: Paths,
    pub standin: Standin,
}

fn get<'a>(ini: &'a Ini, section: &str, key: &str) -> &'a str {
    ini.get(section)
        .and_then(|k| k.get(key))
        .map(String::as_str)
        .unwrap_or("")
}

/// Grafana parses booleans with Go's strconv.ParseBool (via go-ini MustBool): invalid → false.
fn get_bool(ini: &Ini, section: &str, key: &str) -> bool {
    matches!(
        get(ini, section, key).trim(),
        "1" | "t" | "T" | "TRUE" | "true" | "True"
    )
}

fn get_ms(ini: &Ini, key: &str) -> Result<Option<Duration>> {
    let v = get(ini, "standin", key).trim();
    if v.is_empty() {
        return Ok(None);
    }
    let ms: u64 = v
        .parse()
        .map_err(|_| anyhow!("[standin] {key}: not a number of milliseconds: {v:?}"))?;
    Ok(Some(Duration::from_millis(ms)))
}

fn make_absolute(p: &str, base: &Path) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Resolves the version: `STANDIN_VERSION`, else the first line of `<home>/VERSION`, else
/// [`COMPILED_VERSION`].
pub fn resolve_version(home: &Path, env: &HashMap<String, String>) -> String {
    if let Some(v) = env.get("STANDIN_VERSION").filter(|v| !v.trim().is_empty()) {
        return v.trim().to_string();
    }
    if let Ok(text) = std::fs::read_to_string(home.join("VERSION")) {
        if let Some(line) = text.lines().next().filter(|l| !l.trim().is_empty()) {
            return line.trim().to_string();
        }
    }
    COMPILED_VERSION.to_string()
}

/// Parses `host:port` (or a bare host) with a default port.
fn host_port(s: &str, default_port: u16) -> Result<(String, u16)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| anyhow!("invalid host {s:?}"))?;
        let host = rest[..end].to_string();
        let port = match rest[end + 1..].strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| anyhow!("invalid port in {s:?}"))?,
            None => default_port,
        };
        return Ok((host, port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((
            h.to_string(),
            p.parse().map_err(|_| anyhow!("invalid port in {s:?}"))?,
        )),
        _ => Ok((s.to_string(), default_port)),
    }
}

impl Settings {
    /// Loads and validates everything; errors read like Grafana's start-up failures.
    pub fn load(input: &LoadInput<'_>) -> Result<Self> {
        let (ini, provenance) = load(input)?;
        let home = input.home.to_path_buf();
        let version = resolve_version(&home, input.env);

        let data = make_absolute(get(&ini, "paths", "data"), &home);
        let paths = Paths {
            logs: make_absolute(get(&ini, "paths", "logs"), &home),
            plugins: make_absolute(get(&ini, "paths", "plugins"), &home),
            provisioning: make_absolute(get(&ini, "paths", "provisioning"), &home),
            data,
            home,
        };

        let port_str = get(&ini, "server", "http_port").trim();
        let http_port: u16 = port_str
            .parse()
            .map_err(|_| anyhow!("invalid [server] http_port: {port_str:?}"))?;
        let mut app_url = get(&ini, "server", "root_url").trim().to_string();
        if !app_url.ends_with('/') {
            app_url.push('/');
        }
        let parsed =
            url::Url::parse(&app_url).map_err(|e| anyhow!("invalid root_url {app_url:?}: {e}"))?;
        let app_sub_url = parsed.path().trim_end_matches('/').to_string();

        let whitelist_raw = get(&ini, "auth.proxy", "whitelist");
        let whitelist = whitelist_raw
            .split([',', ' ', '\t'])
            .filter(|s| !s.trim().is_empty())
            .map(IpNet::parse)
            .collect::<Result<Vec<_>>>()
            .context("invalid [auth.proxy] whitelist")?;
        let headers = get(&ini, "auth.proxy", "headers")
            .split_whitespace()
            .filter_map(|f| f.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let auth_proxy = AuthProxy {
            enabled: get_bool(&ini, "auth.proxy", "enabled"),
            header_name: get(&ini, "auth.proxy", "header_name").trim().to_string(),
            header_property: get(&ini, "auth.proxy", "header_property")
                .trim()
                .to_string(),
            whitelist,
            headers,
            auto_assign_org_role: get(&ini, "users", "auto_assign_org_role").to_string(),
        };
        if auth_proxy.enabled && auth_proxy.header_name.is_empty() {
            bail!("[auth.proxy] header_name must not be empty");
        }
        if !matches!(auth_proxy.header_property.as_str(), "username" | "email") {
            bail!(
                "[auth.proxy] header_property must be username or email, got {:?}",
                auth_proxy.header_property
            );
        }

        let database = Self::database(&ini, &paths.data)?;

        let mode = Mode::parse(get(&ini, "standin", "mode"))?;
        let crash_after =
            get_ms(&ini, "crash_after_ms")?.or((mode == Mode::Crash).then_some(Duration::ZERO));
        let start_delay = get_ms(&ini, "start_delay_ms")?
            .or((mode == Mode::SlowStart).then_some(Duration::from_secs(3)));

        Ok(Settings {
            version,
            http_addr: get(&ini, "server", "http_addr").trim().to_string(),
            http_port,
            app_url,
            app_sub_url,
            serve_from_sub_path: get_bool(&ini, "server", "serve_from_sub_path"),
            hide_version: get_bool(&ini, "auth.anonymous", "hide_version"),
            auth_proxy,
            auth_jwt: AuthJwt::load(&ini)?,
            basic_auth: get_bool(&ini, "auth.basic", "enabled"),
            admin_user: get(&ini, "security", "admin_user").to_string(),
            admin_email: get(&ini, "security", "admin_email").to_string(),
            admin_password: get(&ini, "security", "admin_password").to_string(),
            secret_key: get(&ini, "security", "secret_key").to_string(),
            allow_sign_up: get_bool(&ini, "users", "allow_sign_up"),
            database,
            paths,
            standin: Standin {
                mode,
                crash_after,
                start_delay,
                strict_sub_path: get_bool(&ini, "standin", "strict_sub_path"),
                ignore_sigterm: get_bool(&ini, "standin", "ignore_sigterm"),
            },
            provenance,
            ini,
        })
    }

    fn database(ini: &Ini, data: &Path) -> Result<Database> {
        let url_value = get(ini, "database", "url").trim();
        let (kind, host, name, user) = if !url_value.is_empty() {
            // Grafana: url = mysql://user:secret@host:port/database overrides the other keys.
            let u = url::Url::parse(url_value).map_err(|_| anyhow!("invalid [database] url"))?;
            let host = match (u.host_str(), u.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => bail!("[database] url has no host"),
            };
            let kind = match u.scheme() {
                "postgresql" => "postgres".to_string(),
                s => s.to_string(),
            };
            (
                kind,
                host,
                u.path().trim_start_matches('/').to_string(),
                u.username().to_string(),
            )
        } else {
            (
                get(ini, "database", "type").trim().to_string(),
                get(ini, "database", "host").trim().to_string(),
                get(ini, "database", "name").to_string(),
                get(ini, "database", "user").to_string(),
            )
        };
        match kind.as_str() {
            "sqlite3" | "sqlite" => Ok(Database::Sqlite {
                path: make_absolute(get(ini, "database", "path").trim(), data),
            }),
            "postgres" | "mysql" => {
                let default_port = if kind == "postgres" { 5432 } else { 3306 };
                let (host, port) = host_port(&host, default_port)?;
                Ok(Database::Network {
                    kind,
                    host,
                    port,
                    name,
                    user,
                })
            }
            other => bail!("unknown database type: {other:?}"),
        }
    }

    /// The settings report served at `/api/standin/settings`: every effective value, except
    /// that secrets are replaced by whether they are set and a sha256 prefix.
    pub fn report(&self) -> serde_json::Value {
        use serde_json::json;
        let mut sections = Map::new();
        for (section, keys) in &self.ini {
            let mut m = Map::new();
            for (key, value) in keys {
                let v = if is_secret_key(key) {
                    secret_summary(value)
                } else if section == "database" && key == "url" {
                    Value::String(redact_url(value))
                } else {
                    Value::String(value.clone())
                };
                m.insert(key.clone(), v);
            }
            sections.insert(section.clone(), Value::Object(m));
        }
        let database = match &self.database {
            Database::Sqlite { path } => json!({"type": "sqlite3", "path": path}),
            Database::Network {
                kind,
                host,
                port,
                name,
                user,
            } => json!({"type": kind, "host": host, "port": port, "name": name, "user": user}),
        };
        json!({
            "version": self.version,
            "commit": COMMIT,
            "app_url": self.app_url,
            "app_sub_url": self.app_sub_url,
            "serve_from_sub_path": self.serve_from_sub_path,
            "http_addr": self.http_addr,
            "http_port": self.http_port,
            "auth_proxy": {
                "enabled": self.auth_proxy.enabled,
                "header_name": self.auth_proxy.header_name,
                "header_property": self.auth_proxy.header_property,
                "whitelist": self.auth_proxy.whitelist.iter()
                    .map(|n| format!("{}/{}", n.addr, n.prefix)).collect::<Vec<_>>(),
                "headers": self.auth_proxy.headers.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect::<Map<_, _>>(),
            },
            "auth_jwt": {
                "enabled": self.auth_jwt.enabled,
                "header_name": self.auth_jwt.header_name,
                "key_file": self.auth_jwt.key_file,
                "expect_claims": self.auth_jwt.expect_claims,
                "role_attribute_path": self.auth_jwt.role_attribute_path,
                "role_attribute_strict": self.auth_jwt.role_attribute_strict,
            },
            "admin_user": self.admin_user,
            "admin_password": secret_summary(&self.admin_password),
            "secret_key": secret_summary(&self.secret_key),
            "allow_sign_up": self.allow_sign_up,
            "database": database,
            "paths": {
                "home": self.paths.home,
                "data": self.paths.data,
                "logs": self.paths.logs,
                "plugins": self.paths.plugins,
                "provisioning": self.paths.provisioning,
            },
            "rendering": {
                "server_url": get(&self.ini, "rendering", "server_url"),
                "callback_url": get(&self.ini, "rendering", "callback_url"),
                "renderer_token": secret_summary(get(&self.ini, "rendering", "renderer_token")),
            },
            "standin": {
                "mode": self.standin.mode.as_str(),
                "crash_after_ms": self.standin.crash_after.map(|d| d.as_millis() as u64),
                "start_delay_ms": self.standin.start_delay.map(|d| d.as_millis() as u64),
                "strict_sub_path": self.standin.strict_sub_path,
                "ignore_sigterm": self.standin.ignore_sigterm,
            },
            "config_files": self.provenance.files,
            "env_overrides": self.provenance.env,
            "cfg_args": self.provenance.args,
            "sections": sections,
        })
    }
}

/// `{"set": bool, "sha256_prefix": "<first 12 hex chars of sha256(value)>"}`.
pub fn secret_summary(value: &str) -> serde_json::Value {
    use sha2::{Digest, Sha256};
    if value.is_empty() {
        return serde_json::json!({"set": false, "sha256_prefix": null});
    }
    let digest = hex::encode(Sha256::digest(value.as_bytes()));
    serde_json::json!({"set": true, "sha256_prefix": &digest[..12]})
}

fn redact_url(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("*********"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) if value.is_empty() => String::new(),
        Err(_) => "(unparseable, hidden)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_ini_value_rules() {
        let ini = parse_ini(
            "top = 1\n[auth.proxy]\n; c\n# c\nenabled = true ; inline\nheaders = Email:X-E Role:X-R\n\
             [security]\nadmin_password = \"\"\"a#b;c\"\"\"\nq = 'x'\nr = \"y\"\nm = \"\"\"one\ntwo\"\"\"\nb = `z#`\n",
        )
        .unwrap();
        assert_eq!(ini["DEFAULT"]["top"], "1");
        assert_eq!(ini["auth.proxy"]["enabled"], "true");
        assert_eq!(ini["auth.proxy"]["headers"], "Email:X-E Role:X-R");
        assert_eq!(ini["security"]["admin_password"], "a#b;c");
        assert_eq!(ini["security"]["q"], "x");
        assert_eq!(ini["security"]["r"], "y");
        assert_eq!(ini["security"]["m"], "one\ntwo");
        assert_eq!(ini["security"]["b"], "z#");
        assert!(parse_ini("[x\n").is_err());
        assert!(parse_ini("novalue\n").is_err());
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name("auth.proxy", "enabled"), "GF_AUTH_PROXY_ENABLED");
        assert_eq!(env_name("server", "http-port"), "GF_SERVER_HTTP_PORT");
        assert_eq!(env_name(DEFAULT_SECTION, "app_mode"), "GF_APP_MODE");
    }

    #[test]
    fn precedence_defaults_ini_env_args() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("g.ini");
        std::fs::write(
            &cfg,
            "[server]\nhttp_port = 4000\ndomain = ini\n[security]\nadmin_user = fromini\n",
        )
        .unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cr3t\n\n").unwrap();
        let env: HashMap<String, String> = [
            ("GF_SERVER_HTTP_PORT", "5000"),
            ("GF_SECURITY_SECRET_KEY__FILE", secret.to_str().unwrap()),
            ("GF_SERVER_DOMAIN", "env"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let args = vec![
            "cfg:default.security.admin_user=argdefault".to_string(),
            "cfg:default.server.protocol=https".to_string(),
            "cfg:server.http_port=6000".to_string(),
        ];
        let s = Settings::load(&LoadInput {
            home: dir.path(),
            config: Some(&cfg),
            cfg_args: &args,
            env: &env,
        })
        .unwrap();
        assert_eq!(s.http_port, 6000); // cfg: beats env beats ini
        assert_eq!(s.admin_user, "fromini"); // ini beats cfg:default.
        assert_eq!(s.secret_key, "s3cr3t");
        assert_eq!(s.app_url, "https://env:6000/"); // %(…)s sees the final values
        assert_eq!(s.app_sub_url, "");
    }

    #[test]
    fn sub_url_and_database() {
        let dir = tempfile::tempdir().unwrap();
        let env: HashMap<String, String> = [
            ("GF_SERVER_ROOT_URL", "http://h/t/acme"),
            ("GF_DATABASE_URL", "postgres://u:p@db.example:6543/g"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let s = Settings::load(&LoadInput {
            home: dir.path(),
            config: None,
            cfg_args: &[],
            env: &env,
        })
        .unwrap();
        assert_eq!(s.app_url, "http://h/t/acme/");
        assert_eq!(s.app_sub_url, "/t/acme");
        match &s.database {
            Database::Network { host, port, .. } => {
                assert_eq!((host.as_str(), *port), ("db.example", 6543))
            }
            _ => panic!(),
        }
        let report = s.report().to_string();
        assert!(!report.contains(":p@"), "{report}");
    }

    #[test]
    fn whitelist_nets() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("nope").is_err());
    }

    #[test]
    fn expansion() {
        let env: HashMap<String, String> = [("X", "1")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(expand_vars("a$__env{X}b${X}c$d", &env).unwrap(), "a1b1c$d");
    }
}
