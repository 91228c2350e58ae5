//! Data formats users write by hand (documented in data/README.md):
//! - plain text (`.txt`): language modelling, loss on every token;
//! - instruction JSONL: `{"prompt": string, "response": string}` per line;
//! - multiple-choice JSONL: `{"question": string, "choices": [string], "answer": index}`.
//!
//! Parsing keeps the good lines and reports every bad one with its line number, so the web
//! app can preview a file; [`Dataset::parse`] is the strict form the CLI uses.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instruct {
    pub prompt: String,
    pub response: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McQuestion {
    pub question: String,
    pub choices: Vec<String>,
    /// 0-based index of the right choice.
    pub answer: usize,
    /// How the question becomes the context the choices are scored after.
    #[serde(default)]
    pub format: PromptFormat,
}

/// How a multiple-choice question is put to the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum PromptFormat {
    /// "Question: {question}\nAnswer:" (lm-evaluation-harness's ARC prompt).
    #[default]
    Wrapped,
    /// The question as written (it carries its own wrapper, e.g. "Question: …\nAnswer:").
    Raw,
}

impl McQuestion {
    /// The scoring convention of the reference zero-shot numbers (lm-evaluation-harness's):
    /// this context, then each choice as " {choice}", tokenized separately.
    pub fn context(&self) -> String {
        match self.format {
            PromptFormat::Wrapped => format!("Question: {}\nAnswer:", self.question),
            PromptFormat::Raw => self.question.clone(),
        }
    }
    pub fn continuation(&self, i: usize) -> String {
        format!(" {}", self.choices[i])
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Dataset {
    Text(String),
    Instruct(Vec<Instruct>),
    MultipleChoice(Vec<McQuestion>),
}

/// A line that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// What a lenient parse found: the usable records and the problems.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub dataset: Dataset,
    pub errors: Vec<LineError>,
}

impl Dataset {
    pub fn kind(&self) -> &'static str {
        match self {
            Dataset::Text(_) => "text",
            Dataset::Instruct(_) => "instruct",
            Dataset::MultipleChoice(_) => "multiple-choice",
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Dataset::Text(t) => t.len(),
            Dataset::Instruct(v) => v.len(),
            Dataset::MultipleChoice(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lenient parse: the format is taken from the name (`.txt` is text, `.jsonl`/`.json`
    /// is JSONL) or, failing that, from the content; JSONL records are told apart by keys.
    pub fn parse_lenient(name: &str, text: &str) -> Result<Parsed> {
        if text.trim().is_empty() {
            return Err(Error::Data(format!("{name} is empty")));
        }
        let lower = name.to_ascii_lowercase();
        let looks_jsonl = text.trim_start().starts_with('{');
        if lower.ends_with(".txt")
            || (!lower.ends_with(".jsonl") && !lower.ends_with(".json") && !looks_jsonl)
        {
            return Ok(Parsed {
                dataset: Dataset::Text(text.to_owned()),
                errors: Vec::new(),
            });
        }
        let mut instruct = Vec::new();
        let mut mc = Vec::new();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let err = |message: String| LineError {
                line: line_no,
                message,
            };
            let v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(err(format!("not valid JSON ({e})")));
                    continue;
                }
            };
            match parse_record(&v) {
                Ok(Record::Instruct(r)) => instruct.push(r),
                Ok(Record::Mc(r)) => mc.push(r),
                Err(m) => errors.push(err(m)),
            }
        }
        if !instruct.is_empty() && !mc.is_empty() {
            return Err(Error::Data(format!(
                "{name} mixes instruction ({}) and multiple-choice ({}) records; use one format per file",
                instruct.len(),
                mc.len()
            )));
        }
        let dataset = if mc.is_empty() {
            Dataset::Instruct(instruct)
        } else {
            Dataset::MultipleChoice(mc)
        };
        Ok(Parsed { dataset, errors })
    }

    /// Strict parse: any bad line, or no usable record, is an error naming the line.
    pub fn parse(name: &str, text: &str) -> Result<Dataset> {
        let p = Self::parse_lenient(name, text)?;
        if let Some(e) = p.errors.first() {
            let more = match p.errors.len() {
                1 => String::new(),
                n => format!(" (and {} more bad lines)", n - 1),
            };
            return Err(Error::Data(format!(
                "{name}:{}: {}{more}",
                e.line, e.message
            )));
        }
        if p.dataset.is_empty() {
            return Err(Error::Data(format!("{name} has no usable records")));
        }
        Ok(p.dataset)
    }

    /// Reads and strictly parses a file (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: &std::path::Path) -> Result<Dataset> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&path.display().to_string(), &text)
    }
}

enum Record {
    Instruct(Instruct),
    Mc(McQuestion),
}

fn parse_record(v: &serde_json::Value) -> std::result::Result<Record, String> {
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let string = |k: &str| -> std::result::Result<String, String> {
        match obj.get(k) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("\"{k}\" must be a string")),
            None => Err(format!("missing \"{k}\"")),
        }
    };
    if obj.contains_key("question") || obj.contains_key("choices") {
        let question = string("question")?;
        let choices = match obj.get("choices") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|c| {
                    c.as_str()
                        .map(str::to_owned)
                        .ok_or("\"choices\" must hold strings")
                })
                .collect::<std::result::Result<Vec<_>, _>>()?,
            Some(_) => return Err("\"choices\" must be an array of strings".into()),
            None => return Err("missing \"choices\"".into()),
        };
        if choices.len() < 2 {
            return Err(format!("needs at least 2 choices, has {}", choices.len()));
        }
        let answer = obj
            .get("answer")
            .ok_or("missing \"answer\"")?
            .as_u64()
            .ok_or("\"answer\" must be a 0-based integer index")? as usize;
        if answer >= choices.len() {
            return Err(format!(
                "\"answer\" {answer} is out of range for {} choices",
                choices.len()
            ));
        }
        return Ok(Record::Mc(McQuestion {
            question,
            choices,
            answer,
            format: PromptFormat::Wrapped,
        }));
    }
    if obj.contains_key("prompt") || obj.contains_key("response") {
        return Ok(Record::Instruct(Instruct {
            prompt: string("prompt")?,
            response: string("response")?,
        }));
    }
    Err("expected {\"prompt\",\"response\"} or {\"question\",\"choices\",\"answer\"}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_recognised() {
        let mc = r#"{"question": "2+2?", "choices": ["3", "4"], "answer": 1}"#;
        assert!(
            matches!(Dataset::parse("a.jsonl", mc).unwrap(), Dataset::MultipleChoice(v) if v[0].answer == 1)
        );
        let ins = "{\"prompt\": \"Hi\", \"response\": \" there\"}\n\n";
        assert!(
            matches!(Dataset::parse("a.jsonl", ins).unwrap(), Dataset::Instruct(v) if v.len() == 1)
        );
        assert!(matches!(
            Dataset::parse("a.txt", "{ not json").unwrap(),
            Dataset::Text(_)
        ));
    }

    #[test]
    fn bad_lines_are_named() {
        let text = "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 0}\n{oops\n{\"question\": \"q\", \"choices\": [\"a\"], \"answer\": 0}\n";
        let p = Dataset::parse_lenient("x.jsonl", text).unwrap();
        assert_eq!(p.dataset.len(), 1);
        assert_eq!(
            p.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![2, 3]
        );
        let e = Dataset::parse("x.jsonl", text).unwrap_err().to_string();
        assert!(e.contains("x.jsonl:2") && e.contains("1 more"), "{e}");
        let e = Dataset::parse(
            "x.jsonl",
            r#"{"question": "q", "choices": ["a", "b"], "answer": 5}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn empty_and_mixed_files_are_refused() {
        assert!(Dataset::parse("e.txt", " \n")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let mixed = "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 0}";
        assert!(Dataset::parse("m.jsonl", mixed)
            .unwrap_err()
            .to_string()
            .contains("mixes"));
    }
}
