//! Why generating, writing, loading or checking a bundle failed. Every message names
//! the file (or parameter) concerned; none ever contains key material.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A [`crate::ClusterParams`] field cannot be put into a certificate.
    #[error("invalid cluster parameter {field}: {message}")]
    InvalidParams {
        field: &'static str,
        message: String,
    },

    /// The crypto library refused to build `file`.
    #[error("generating {}: {message}", file.display())]
    Generate { file: PathBuf, message: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// `write_to` was asked not to replace an existing bundle.
    #[error("{} already exists; refusing to overwrite an existing secrets bundle", path.display())]
    AlreadyExists { path: PathBuf },

    /// A `SecretsBundle` document could not be read or written.
    #[error("secrets bundle document: {message}")]
    Document { message: String },

    /// `check` found the bundle unusable for this node; one entry per problem.
    #[error("secrets bundle rejected: {}", Problems(problems))]
    Rejected { problems: Vec<Problem> },
}

/// One thing wrong with one file of a bundle, e.g.
/// "pki/apiserver.crt does not cover node name `node-1` (SANs: ...)".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The bundle-relative file, e.g. `pki/apiserver.crt`.
    pub file: PathBuf,
    /// What is wrong with it, phrased to follow the file name.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.file.display(), self.message)
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> PkiError {
        PkiError::Io {
            path: path.into(),
            source,
        }
    }

    /// The problems `check` found, empty for any other error.
    pub fn problems(&self) -> &[Problem] {
        match self {
            PkiError::Rejected { problems } => problems,
            _ => &[],
        }
    }
}
