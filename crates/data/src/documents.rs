//! Where documents come from: a folder of `.txt` files (one document each), JSON Lines (a named
//! string field of each object) or Parquet (a named string column), each read as a stream, so a
//! data set larger than memory passes through it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow_array::{Array, LargeStringArray, StringArray, StringViewArray};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::error::DataError;
use crate::tokenize::text_files;

/// A data set of documents, as found at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentSource {
    /// `.txt` files, sorted by path: each file is a document.
    Text(Vec<PathBuf>),
    /// A JSON Lines file: each line an object whose `field` holds a document.
    Jsonl {
        /// The file.
        path: PathBuf,
        /// The field of the document's text.
        field: String,
    },
    /// A Parquet file: each row's `column` holds a document.
    Parquet {
        /// The file.
        path: PathBuf,
        /// The column of the documents' text.
        column: String,
    },
}

impl DocumentSource {
    /// The documents at `path`: a `.jsonl` (or `.json`) file's objects' `field`, a `.parquet`
    /// file's column `field`, else `.txt` files (a file, or every one in a folder).
    pub fn at(path: &Path, field: &str) -> Result<Self, DataError> {
        let extension = path.extension().map(|e| e.to_string_lossy().to_lowercase());
        Ok(match extension.as_deref() {
            Some("jsonl" | "json") => Self::Jsonl {
                path: path.to_path_buf(),
                field: field.to_string(),
            },
            Some("parquet") => Self::Parquet {
                path: path.to_path_buf(),
                column: field.to_string(),
            },
            _ => Self::Text(text_files(path)?),
        })
    }

    /// The documents, in order, read as they are needed.
    pub fn documents(&self) -> Result<Documents, DataError> {
        Ok(match self {
            Self::Text(files) => Documents::Text(files.clone().into_iter()),
            Self::Jsonl { path, field } => {
                let file = File::open(path)
                    .map_err(|err| DataError::new(path, format!("cannot open: {err}")))?;
                Documents::Jsonl {
                    path: path.clone(),
                    field: field.clone(),
                    lines: BufReader::new(file).lines().enumerate(),
                }
            }
            Self::Parquet { path, column } => Documents::Parquet {
                path: path.clone(),
                reader: parquet_column(path, column)?,
                pending: VecDeque::new(),
            },
        })
    }
}

/// A reader of `path`'s column `column` alone, in batches.
fn parquet_column(path: &Path, column: &str) -> Result<ParquetRecordBatchReader, DataError> {
    let error = |problem: String| DataError::new(path, problem);
    let file = File::open(path).map_err(|err| error(format!("cannot open: {err}")))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|err| error(format!("not a readable Parquet file: {err}")))?;
    let fields = builder.schema().fields();
    let Some(index) = fields.iter().position(|f| f.name() == column) else {
        let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
        return Err(error(format!(
            "no column `{column}` (columns: {})",
            names.join(", ")
        )));
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    builder
        .with_projection(mask)
        .with_batch_size(1024)
        .build()
        .map_err(|err| error(format!("cannot read column `{column}`: {err}")))
}

/// The documents of a [`DocumentSource`], one `Result` each.
pub enum Documents {
    /// Files still to read.
    Text(std::vec::IntoIter<PathBuf>),
    /// Lines still to read, numbered.
    Jsonl {
        /// The file, for errors.
        path: PathBuf,
        /// The field of the text.
        field: String,
        /// The lines.
        lines: std::iter::Enumerate<std::io::Lines<BufReader<File>>>,
    },
    /// Batches still to read, and the texts of the current one.
    Parquet {
        /// The file, for errors.
        path: PathBuf,
        /// The batches of the one column.
        reader: ParquetRecordBatchReader,
        /// Texts of the batch read last, not yet handed out.
        pending: VecDeque<String>,
    },
}

impl Iterator for Documents {
    type Item = Result<String, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Text(files) => {
                let path = files.next()?;
                Some(std::fs::read_to_string(&path).map_err(|err| {
                    DataError::new(&path, format!("cannot read as UTF-8 text: {err}"))
                }))
            }
            Self::Jsonl { path, field, lines } => loop {
                let (index, line) = lines.next()?;
                let error = |problem: String| {
                    DataError::new(path.as_path(), format!("line {}: {problem}", index + 1))
                };
                let line = match line {
                    Ok(line) => line,
                    Err(err) => return Some(Err(error(format!("cannot read: {err}")))),
                };
                if line.trim().is_empty() {
                    continue;
                }
                let value: serde_json::Value = match serde_json::from_str(&line) {
                    Ok(value) => value,
                    Err(err) => return Some(Err(error(format!("not JSON: {err}")))),
                };
                return Some(match value.get(field.as_str()) {
                    Some(serde_json::Value::String(text)) => Ok(text.clone()),
                    Some(_) => Err(error(format!("field `{field}` is not a string"))),
                    None => Err(error(format!("no field `{field}`"))),
                });
            },
            Self::Parquet {
                path,
                reader,
                pending,
            } => loop {
                if let Some(text) = pending.pop_front() {
                    return Some(Ok(text));
                }
                let batch = match reader.next()? {
                    Ok(batch) => batch,
                    Err(err) => {
                        return Some(Err(DataError::new(
                            path.as_path(),
                            format!("cannot read: {err}"),
                        )));
                    }
                };
                let column = batch.column(0);
                let any = column.as_any();
                // Null rows hold no document: they are left out.
                if let Some(texts) = any.downcast_ref::<StringArray>() {
                    pending.extend(texts.iter().flatten().map(str::to_string));
                } else if let Some(texts) = any.downcast_ref::<LargeStringArray>() {
                    pending.extend(texts.iter().flatten().map(str::to_string));
                } else if let Some(texts) = any.downcast_ref::<StringViewArray>() {
                    pending.extend(texts.iter().flatten().map(str::to_string));
                } else {
                    return Some(Err(DataError::new(
                        path.as_path(),
                        format!("the column is {}, not text", column.data_type()),
                    )));
                }
            },
        }
    }
}
