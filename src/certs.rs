//! A throwaway certificate authority for a TLS cluster (`idunno certs`, `scripts/cluster.sh`
//! with `TLS=1`, the TLS tests): one CA and one certificate for every node, naming the hosts
//! the nodes are reached at, written as the files `--tls-dir` reads (`ca.pem`, `cert.pem`,
//! `key.pem`). A real deployment brings its own, through `--tls-cert/--tls-key/--tls-ca`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use idunno_server::tls::{CA_FILE, CERT_FILE, KEY_FILE};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The hosts a local cluster's certificate names.
pub const LOCAL_HOSTS: [&str; 3] = ["127.0.0.1", "localhost", "::1"];

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0} already exists (pass --force to replace the CA and certificate)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Generate(#[from] rcgen::Error),
    #[error("a host name must not be empty")]
    EmptyHost,
}

/// Makes a new CA and a certificate for `hosts` (IP addresses or DNS names), valid for
/// servers and clients, and writes them into `dir`; the private key is readable by its owner
/// only. Existing files are kept unless `force`.
pub fn make(dir: &Path, hosts: &[impl AsRef<str>], force: bool) -> Result<(), CertsError> {
    if hosts.iter().any(|h| h.as_ref().trim().is_empty()) {
        return Err(CertsError::EmptyHost);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if !force {
        for name in [CA_FILE, CERT_FILE, KEY_FILE] {
            let path = dir.join(name);
            if path.exists() {
                return Err(CertsError::Exists(path));
            }
        }
    }

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "IDunno cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);

    let hosts: Vec<String> = hosts
        .iter()
        .map(|h| h.as_ref().trim().to_string())
        .collect();
    let mut params = CertificateParams::new(hosts)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "IDunno node");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    write(&dir.join(CA_FILE), ca_cert.pem().as_bytes(), 0o644)?;
    write(&dir.join(CERT_FILE), cert.pem().as_bytes(), 0o644)?;
    write(&dir.join(KEY_FILE), key.serialize_pem().as_bytes(), 0o600)?;
    Ok(())
}

/// Writes `bytes` to `path` with `mode` (on Unix), replacing what was there.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertsError> {
    let fail = |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(mode);
        // An existing file keeps its mode through `open`: set it.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
        }
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_a_certificate_that_rustls_loads_and_keeps_them_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = LOCAL_HOSTS;
        make(dir.path(), &hosts, false).unwrap();
        let tls = idunno_server::tls::TlsOptions::from_dir(dir.path())
            .load()
            .unwrap();
        assert!(tls.server.is_some() && tls.transport.is_tls());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = std::fs::read(dir.path().join(CA_FILE)).unwrap();
        assert!(matches!(
            make(dir.path(), &hosts, false),
            Err(CertsError::Exists(_))
        ));
        assert_eq!(std::fs::read(dir.path().join(CA_FILE)).unwrap(), before);
        make(dir.path(), &hosts, true).unwrap();
        assert_ne!(std::fs::read(dir.path().join(CA_FILE)).unwrap(), before);
    }
}
