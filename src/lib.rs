//! artifact-operator: S3 artifact stores for ML pipelines as Kubernetes custom resources.
//!
//! Layout: [`api`] holds the custom resources; [`s3path`], [`resolve`], [`render`] and
//! [`conditions`] are pure; [`aws`] is the AWS edge (S3, IAM, STS).

pub mod api;
pub mod aws;
pub mod conditions;
pub mod render;
pub mod resolve;
pub mod s3path;
