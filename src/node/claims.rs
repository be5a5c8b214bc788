//! Where a node claims its epochs and reads their history: the file-share
//! witness of a two-node cluster, or etcd past two nodes. Both keep the
//! same `EpochRecord`, created only if absent.

use super::*;
use witness::keys::Ledger;

pub(super) enum Claims {
    Witness(Witness),
    Etcd(Ledger),
}

impl Claims {
    pub(super) fn history(&self) -> Result<Vec<EpochRecord>> {
        Ok(match self {
            Claims::Witness(w) => w.history().context("read the witness's epochs")?,
            Claims::Etcd(l) => l.history().context("read the epochs in etcd")?,
        })
    }

    /// Starts `rec.epoch`: false when another node started it first.
    pub(super) fn claim(&self, rec: &EpochRecord) -> Result<bool> {
        Ok(match self {
            Claims::Witness(w) => w.claim(rec).context("claim an epoch on the witness")?,
            Claims::Etcd(l) => l.claim(rec).context("claim an epoch in etcd")?,
        })
    }

    /// The witness, for what only it keeps (the records of an active going
    /// on without its copy under synchronous commit).
    pub(super) fn witness(&self) -> Result<&Witness> {
        match self {
            Claims::Witness(w) => Ok(w),
            Claims::Etcd(_) => {
                bail!(
                    "synchronous commit needs the file-share witness; this cluster's arbiter is etcd"
                )
            }
        }
    }

    /// Where the epochs are, for status.
    pub(super) fn display(&self) -> String {
        match self {
            Claims::Witness(w) => w.share().display(),
            Claims::Etcd(l) => format!("etcd {}", l.etcd().key("")),
        }
    }
}
