//! CA bundles as users hand them to us: parsed and checked here, before any TLS library sees them,
//! and reduced to their certificates. Pure.
//!
//! A bundle read from a Secret may hold more than certificates (a private key pasted with its
//! certificate): only CERTIFICATE blocks are ever used or published. Nothing here quotes the
//! bundle's content in an error, since a Secret's other blocks are secret.

use rustls::pki_types::CertificateDer;

/// A CA bundle holding only certificates that a TLS client accepts as trust anchors, as PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaBundle {
    pem: String,
    /// How many non-certificate blocks (keys, CSRs, ...) were dropped.
    pub dropped_blocks: usize,
}

impl CaBundle {
    /// The certificates, PEM-encoded: what the operator trusts and publishes.
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

/// Why a bundle cannot be used, in words that say what to fix without quoting the bundle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaBundleError {
    #[error("it holds no PEM block (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)")]
    NoBlock,
    #[error("a PEM block is malformed (a BEGIN line without its END line, or content that is not base64)")]
    Malformed,
    #[error("it holds no CERTIFICATE block")]
    NoCertificate,
    #[error("certificate {0} of the bundle is not a valid X.509 certificate")]
    InvalidCertificate(usize),
}

const BEGIN: &str = "-----BEGIN ";

/// Parses a PEM bundle, keeps its certificates and checks that each is a usable trust anchor.
pub fn parse(text: &str) -> Result<CaBundle, CaBundleError> {
    let begins = text.matches(BEGIN).count();
    if begins == 0 {
        return Err(CaBundleError::NoBlock);
    }
    let blocks = pem::parse_many(text).map_err(|_| CaBundleError::Malformed)?;
    // The parser skips a BEGIN line that has no END line; count them to notice.
    if blocks.len() != begins {
        return Err(CaBundleError::Malformed);
    }
    let certificates: Vec<pem::Pem> = blocks.iter().filter(|b| b.tag() == "CERTIFICATE").cloned().collect();
    if certificates.is_empty() {
        return Err(CaBundleError::NoCertificate);
    }
    for (index, certificate) in certificates.iter().enumerate() {
        let mut roots = rustls::RootCertStore::empty();
        if roots.add(CertificateDer::from(certificate.contents().to_vec())).is_err()
            || certificate.contents().is_empty()
        {
            return Err(CaBundleError::InvalidCertificate(index + 1));
        }
    }
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    Ok(CaBundle {
        pem: pem::encode_many_config(&certificates, config),
        dropped_blocks: blocks.len() - certificates.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real self-signed CA certificate (generated for these tests; no key is kept).
    const CERTIFICATE: &str = include_str!("../tests/fixtures/test-ca.pem");

    fn body(pem: &str) -> &str {
        pem.trim().lines().find(|l| !l.starts_with("-----")).unwrap()
    }

    #[test]
    fn keeps_certificates_and_drops_keys() {
        let key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
        let bundle = parse(&format!("{key}{CERTIFICATE}")).unwrap();
        assert_eq!(bundle.dropped_blocks, 1);
        assert!(bundle.pem().contains("BEGIN CERTIFICATE"));
        assert!(!bundle.pem().contains("PRIVATE KEY") && !bundle.pem().contains("c2VjcmV0"));
        assert!(bundle.pem().contains(body(CERTIFICATE)));
    }

    #[test]
    fn refuses_what_a_tls_library_would_panic_on() {
        let unterminated = CERTIFICATE.replace("-----END CERTIFICATE-----", "");
        assert_eq!(parse(&unterminated), Err(CaBundleError::Malformed));
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n";
        assert_eq!(parse(bad_base64), Err(CaBundleError::Malformed));
        let garbage_der = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n";
        assert_eq!(parse(garbage_der), Err(CaBundleError::InvalidCertificate(1)));
        let empty = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
        assert_eq!(parse(empty), Err(CaBundleError::InvalidCertificate(1)));
        assert_eq!(parse("just text"), Err(CaBundleError::NoBlock));
        let only_key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";
        assert_eq!(parse(only_key), Err(CaBundleError::NoCertificate));
        let second_broken =
            format!("{CERTIFICATE}-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n");
        assert_eq!(parse(&second_broken), Err(CaBundleError::InvalidCertificate(2)));
    }

    #[test]
    fn errors_never_quote_the_bundle() {
        let secret =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nc2VjcmV0";
        let message = parse(secret).unwrap_err().to_string();
        assert!(!message.contains("c2VjcmV0"), "{message}");
    }
}
