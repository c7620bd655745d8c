//! The AWS edge: building S3, STS, IAM and EKS clients for a store, classifying their errors into
//! condition reasons, and rate-limiting calls per account.

pub mod clients;
pub mod eks;
pub mod failure;
pub mod iam;
pub mod insecure;
pub mod ratelimit;
pub mod s3;

pub use clients::{AwsEdge, ConnectError, S3Connection, StaticKeys};
