//! Parsing of `s3://bucket/prefix` paths. Mirrors the CRD's CEL rules so that objects written
//! before the rules existed, or through a path that skipped them, still get a clear answer.

use std::fmt;

/// A parsed `s3://bucket/prefix`. The prefix has no leading or trailing slash; empty means the
/// whole bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Path {
    pub bucket: String,
    pub prefix: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path must start with s3://, for example s3://my-bucket/pipelines")]
    Scheme,
    #[error("path must not contain control characters (newline, tab, DEL...): remove them")]
    ControlCharacter,
    #[error("the bucket name in path {0}")]
    BucketName(&'static str),
    #[error("the prefix in path must not contain empty segments (//)")]
    EmptySegment,
    #[error(
        "the prefix in path must not contain . or .. segments: HTTP clients resolve them away, so objects would land under another key"
    )]
    DotSegment,
}

impl S3Path {
    pub fn parse(path: &str) -> Result<Self, PathError> {
        if path.chars().any(|c| c.is_ascii_control()) {
            return Err(PathError::ControlCharacter);
        }
        let rest = path.strip_prefix("s3://").ok_or(PathError::Scheme)?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        validate_bucket_name(bucket).map_err(PathError::BucketName)?;
        if prefix.starts_with('/') || prefix.contains("//") {
            return Err(PathError::EmptySegment);
        }
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        if prefix.split('/').any(|segment| segment == "." || segment == "..") {
            return Err(PathError::DotSegment);
        }
        Ok(Self { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }

    /// The key for `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_owned() } else { format!("{}/{name}", self.prefix) }
    }

    /// The prefix as S3 key prefix: empty, or ending in `/`.
    /// The account and region a bucket in an account-regional namespace belongs to: its name is
    /// `<prefix>-<12-digit account>-<region>-an` (for example `ml-111122223333-us-west-2-an`),
    /// and CreateBucket must say so. None for a bucket in the global namespace.
    pub fn account_regional(&self) -> Option<(&str, &str)> {
        let name = self.bucket.strip_suffix("-an")?;
        let parts: Vec<&str> = name.split('-').collect();
        let is_region = |region: &[&str]| {
            region.len() >= 3
                && region[0].len() == 2
                && region[..region.len() - 1].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
                && region[region.len() - 1].bytes().all(|b| b.is_ascii_digit())
                && !region[region.len() - 1].is_empty()
        };
        // A prefix, then the account, then the region: the region takes the last three parts or more.
        (1..parts.len().saturating_sub(3)).rev().find_map(|i| {
            let account = parts[i];
            (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && is_region(&parts[i + 1..])).then(
                || {
                    let region_start = name.len() - parts[i + 1..].iter().map(|p| p.len() + 1).sum::<usize>() + 1;
                    (account, &name[region_start..])
                },
            )
        })
    }

    pub fn key_prefix(&self) -> String {
        if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) }
    }
}

impl fmt::Display for S3Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// S3's general-purpose bucket naming rules. The error completes "the bucket name in path ...".
pub fn validate_bucket_name(name: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&name.len()) {
        return Err("must be 3 to 63 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-') {
        return Err("may contain only lowercase letters, digits, dots and hyphens");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(name.as_bytes()[0]) || !alnum(name.as_bytes()[name.len() - 1]) {
        return Err("must start and end with a lowercase letter or a digit");
    }
    if name.contains("..") {
        return Err("must not contain two adjacent dots");
    }
    if name.split('.').count() == 4
        && name.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("must not be formatted as an IP address");
    }
    if ["xn--", "sthree-", "amzn-s3-demo-"].iter().any(|prefix| name.starts_with(prefix)) {
        return Err("must not start with the reserved prefixes xn--, sthree- or amzn-s3-demo-");
    }
    if ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"].iter().any(|suffix| name.ends_with(suffix)) {
        return Err("must not end with the reserved suffixes -s3alias, --ol-s3, .mrap, --x-s3 or --table-s3");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let path = S3Path::parse("s3://my-bucket/team/pipelines/").unwrap();
        assert_eq!(path.bucket, "my-bucket");
        assert_eq!(path.prefix, "team/pipelines");
        assert_eq!(path.to_string(), "s3://my-bucket/team/pipelines");
        assert_eq!(path.key("x"), "team/pipelines/x");
        assert_eq!(path.key_prefix(), "team/pipelines/");
    }

    #[test]
    fn parses_bare_bucket() {
        let path = S3Path::parse("s3://bucket.with.dots").unwrap();
        assert_eq!(path.prefix, "");
        assert_eq!(path.key("x"), "x");
        assert_eq!(path.key_prefix(), "");
        assert_eq!(path.to_string(), "s3://bucket.with.dots");
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(S3Path::parse("gs://bucket"), Err(PathError::Scheme));
        for (why, bad_paths) in [
            (PathError::EmptySegment, &["s3://bucket//x", "s3://bucket//", "s3://bucket/a//"][..]),
            (PathError::DotSegment, &["s3://bucket/.", "s3://bucket/..", "s3://bucket/a/./b", "s3://bucket/a/../b/"]),
            (
                PathError::ControlCharacter,
                &[
                    "s3://bucket/team\nb",
                    "s3://bucket/team\tb",
                    "s3://bucket/team\u{7f}",
                    "s3://buck\net/x",
                    "s3://my\rbucket",
                ],
            ),
        ] {
            for bad in bad_paths {
                assert_eq!(S3Path::parse(bad).err().as_ref(), Some(&why), "{bad:?}");
            }
        }
        for fine in ["s3://bucket/.hidden/a..b/...", "s3://bucket/", "s3://bucket/a/"] {
            assert!(S3Path::parse(fine).is_ok(), "{fine}");
        }
        for (bad, why) in [
            ("ab", "must be 3 to 63 characters long"),
            ("Upper", "may contain only lowercase letters, digits, dots and hyphens"),
            ("-start", "must start and end with a lowercase letter or a digit"),
            ("a..b", "must not contain two adjacent dots"),
            ("192.168.1.1", "must not be formatted as an IP address"),
            ("xn--bucket", "must not start with the reserved prefixes xn--, sthree- or amzn-s3-demo-"),
            ("amzn-s3-demo-bucket", "must not start with the reserved prefixes xn--, sthree- or amzn-s3-demo-"),
            (
                "bucket-s3alias",
                "must not end with the reserved suffixes -s3alias, --ol-s3, .mrap, --x-s3 or --table-s3",
            ),
            (
                "bucket--table-s3",
                "must not end with the reserved suffixes -s3alias, --ol-s3, .mrap, --x-s3 or --table-s3",
            ),
        ] {
            assert_eq!(validate_bucket_name(bad), Err(why), "{bad}");
        }
        assert!(validate_bucket_name(&"a".repeat(64)).is_err());
        assert!(validate_bucket_name("1.2.3.bucket").is_ok());
    }

    #[test]
    fn tells_account_regional_buckets() {
        let named = |bucket: &str| S3Path::parse(&format!("s3://{bucket}/runs")).unwrap();
        let path = named("ml-artifacts-111122223333-us-west-2-an");
        assert_eq!(path.account_regional(), Some(("111122223333", "us-west-2")));
        assert_eq!(
            named("ml-111122223333-us-gov-west-1-an").account_regional(),
            Some(("111122223333", "us-gov-west-1"))
        );
        assert_eq!(named("ml-artifacts").account_regional(), None);
        assert_eq!(named("ml-111122223333-an").account_regional(), None, "no region");
        assert_eq!(named("111122223333-us-west-2-an").account_regional(), None, "no prefix");
        assert_eq!(named("ml-11112222333-us-west-2-an").account_regional(), None, "an account has 12 digits");
        assert_eq!(named("ml-111122223333-us-west-an").account_regional(), None, "a region ends in a number");
    }
}
