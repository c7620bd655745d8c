//! The AWS edge: building S3, STS and IAM clients for a store, classifying their errors into
//! condition reasons, and rate-limiting calls per account.

pub mod clients;
pub mod failure;
pub mod iam;
pub mod insecure;
pub mod ratelimit;
pub mod s3;

pub use clients::{AwsEdge, ConnectError, S3Connection, StaticKeys};
pub use failure::Failure;
