//! Metadata store: an embedded ACID database (redb) holding one JSON record per key in a few
//! tables. Several changes that must land together go in one [`Batch`].

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// opening metadata store {path}: {source}
    #[error("opening metadata store {path}: {source}")]
    Open { path: String, source: Box<redb::DatabaseError> },
    /// metadata store: {0}
    #[error("metadata store: {0}")]
    Db(#[from] Box<redb::Error>),
    /// metadata record {table}/{key} is corrupt: {source}
    #[error("metadata record {table}/{key} is corrupt: {source}")]
    Decode { table: &'static str, key: String, source: serde_json::Error },
    /// encoding metadata record: {0}
    #[error("encoding metadata record: {0}")]
    Encode(#[from] serde_json::Error),
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// The tables of the store. Keys are strings, values JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// image id (config digest) → image record
    Images,
    /// layer chain id (or `container:<id>`) → snapshot record
    Snapshots,
    /// pod sandbox id → pod record
    Pods,
    /// container id → container record
    Containers,
}

impl Table {
    const ALL: [Table; 4] = [Table::Images, Table::Snapshots, Table::Pods, Table::Containers];

    fn name(self) -> &'static str {
        match self {
            Table::Images => "images",
            Table::Snapshots => "snapshots",
            Table::Pods => "pods",
            Table::Containers => "containers",
        }
    }

    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

enum Op {
    Put(Table, String, Vec<u8>),
    Delete(Table, String),
}

/// Changes applied atomically by [`Store::apply`].
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn put<T: Serialize>(&mut self, table: Table, key: &str, value: &T) -> Result<&mut Batch, StoreError> {
        self.ops.push(Op::Put(table, key.to_string(), serde_json::to_vec(value)?));
        Ok(self)
    }

    pub fn delete(&mut self, table: Table, key: &str) -> &mut Batch {
        self.ops.push(Op::Delete(table, key.to_string()));
        self
    }
}

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Open { path: path.display().to_string(), source: Box::new(e) })?;
        let txn = db.begin_write().map_err(db_err)?;
        for table in Table::ALL {
            txn.open_table(table.def()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(table.def()).map_err(db_err)?;
        match t.get(key).map_err(db_err)? {
            Some(v) => decode(table, key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Every record of a table, in key order.
    pub fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(table.def()).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(decode(table, k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.put(table, key, value)?;
        self.apply(batch)
    }

    pub fn delete(&self, table: Table, key: &str) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.delete(table, key);
        self.apply(batch)
    }

    /// Writes without waiting for the disk: the record is seen at once and becomes durable with
    /// the next durable commit. Only for a record whose owner is written durably next and whose
    /// loss in a crash before that the recovery handles (a new container's snapshot: the
    /// container is still Creating, recovery tears it down and the sweep takes the directory).
    pub fn put_deferred<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.put(table, key, value)?;
        self.commit(batch, Durability::None)
    }

    /// Deletes without waiting for the disk: the deletion is seen at once and becomes durable
    /// with the next durable commit. Only for a record whose owner's durable removal follows
    /// and whose reappearance after a crash the recovery handles (a removed container's
    /// snapshot: the container record, deleted next, makes recovery remove it again).
    pub fn delete_deferred(&self, table: Table, key: &str) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.delete(table, key);
        self.commit(batch, Durability::None)
    }

    /// Applies every change of `batch` in one transaction: all or nothing.
    pub fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        self.commit(batch, Durability::Immediate)
    }

    fn commit(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(durability).map_err(db_err)?;
        for op in &batch.ops {
            match op {
                Op::Put(table, key, value) => {
                    let mut t = txn.open_table(table.def()).map_err(db_err)?;
                    t.insert(key.as_str(), value.as_slice()).map_err(db_err)?;
                }
                Op::Delete(table, key) => {
                    let mut t = txn.open_table(table.def()).map_err(db_err)?;
                    t.remove(key.as_str()).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)
    }
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        table: table.name(),
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_batches_are_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put(Table::Images, "a", &vec![1u32, 2]).unwrap();
            let mut batch = Batch::new();
            batch.put(Table::Images, "b", &vec![3u32]).unwrap();
            batch.delete(Table::Images, "a");
            batch.put(Table::Snapshots, "s", &"x").unwrap();
            store.apply(batch).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get::<Vec<u32>>(Table::Images, "a").unwrap(), None);
        assert_eq!(store.get::<Vec<u32>>(Table::Images, "b").unwrap(), Some(vec![3]));
        assert_eq!(store.list::<String>(Table::Snapshots).unwrap(), vec!["x".to_string()]);
    }

    #[test]
    fn deferred_writes_are_seen_at_once_and_kept_by_the_next_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put_deferred(Table::Snapshots, "container:c", &"snap").unwrap();
            assert_eq!(store.get::<String>(Table::Snapshots, "container:c").unwrap().as_deref(), Some("snap"));
            store.put(Table::Containers, "c", &"ctr").unwrap();
        }
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.get::<String>(Table::Snapshots, "container:c").unwrap().as_deref(), Some("snap"));
            store.delete_deferred(Table::Snapshots, "container:c").unwrap();
            assert_eq!(store.get::<String>(Table::Snapshots, "container:c").unwrap(), None);
            store.delete(Table::Containers, "c").unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get::<String>(Table::Snapshots, "container:c").unwrap(), None);
        assert_eq!(store.get::<String>(Table::Containers, "c").unwrap(), None);
    }

    #[test]
    fn corrupt_record_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.redb")).unwrap();
        store.put(Table::Images, "k", &"text").unwrap();
        let err = store.get::<Vec<u32>>(Table::Images, "k").unwrap_err();
        assert!(err.to_string().contains("images/k"), "{err}");
    }
}
