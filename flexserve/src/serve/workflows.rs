//! Agent workflows (docs/agent-workflows.md): which model comes after which. A request may
//! name its next model (`flexserve.next_model`); one that does not takes it from the
//! config's `[[workflows]]`, each a list of models in the order an agent asks them
//! (`models = ["a", "b", "a"]`: after a request to `a`, `b`; after one to `b`, `a`). The
//! worker prefetches the next model into the guest's free budget once the request's answer
//! is done.

use super::config::ConfigError;
use super::error::ApiError;
use super::models::{Catalogue, ServedModel};
use super::openai::next_model::unknown_next_model;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// One `[[workflows]]` table as the file has it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkflowSection {
    models: Vec<String>,
}

/// Each model's successor, from every workflow of the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workflows {
    next: HashMap<String, String>,
}

const KEY: &str = "workflows";

fn bad(message: String) -> ConfigError {
    ConfigError::Bad { key: KEY, message }
}

/// A model name as `models.default` takes it: its file name without the extension.
fn name(m: &str) -> Result<String, ConfigError> {
    let n = [".gguf", ".fsm"]
        .iter()
        .find_map(|ext| m.strip_suffix(ext))
        .unwrap_or(m);
    if n.is_empty() || n.contains('/') {
        return Err(bad(format!(
            "{m:?} is not a model name (a file name in models.dir, without .gguf or .fsm)"
        )));
    }
    Ok(n.to_string())
}

impl Workflows {
    /// Checks the config's workflows: each has two models at least, and no model is
    /// followed by two different ones (the next model would be a guess).
    pub(super) fn from_sections(sections: Vec<WorkflowSection>) -> Result<Self, ConfigError> {
        Self::new(sections.into_iter().map(|w| w.models).collect())
    }

    /// The workflows of these lists of models, each in the order an agent asks them.
    pub fn new(lists: Vec<Vec<String>>) -> Result<Self, ConfigError> {
        let mut next: HashMap<String, String> = HashMap::new();
        for (i, list) in lists.into_iter().enumerate() {
            if list.len() < 2 {
                return Err(bad(format!(
                    "workflow {} lists {} model(s); a workflow needs two at least (what comes \
                     after what)",
                    i + 1,
                    list.len()
                )));
            }
            let models = list
                .iter()
                .map(|m| name(m))
                .collect::<Result<Vec<_>, _>>()?;
            for pair in models.windows(2) {
                let (from, to) = (&pair[0], &pair[1]);
                match next.get(from) {
                    Some(seen) if seen != to => {
                        return Err(bad(format!(
                            "model {from:?} is followed by both {seen:?} and {to:?}; give each \
                             model one successor, or name the next model per request \
                             (`flexserve.next_model`)"
                        )));
                    }
                    _ => {
                        next.insert(from.clone(), to.clone());
                    }
                }
            }
        }
        Ok(Self { next })
    }

    /// The model the workflows say comes after `model`.
    pub fn after(&self, model: &str) -> Option<&str> {
        self.next.get(model).map(String::as_str)
    }

    /// Whether the config has no workflow.
    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }
}

/// The model to prefetch after a request to `model`: the one it names (a name the models
/// directory lacks is the client's error), else its workflow's (one the directory lacks is
/// the operator's: logged, and nothing prefetched). The same model is no next model.
pub fn next_model(
    catalogue: &Catalogue,
    workflows: &Workflows,
    model: &ServedModel,
    named: Option<&str>,
) -> Result<Option<Arc<ServedModel>>, ApiError> {
    let next = match named {
        Some(n) => catalogue.get(n).map_err(|e| match e {
            ApiError::UnknownModel(_) => unknown_next_model(n),
            other => other,
        })?,
        None => match workflows.after(&model.id) {
            None => return Ok(None),
            Some(n) => match catalogue.get(n) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!(
                        "[flexserve] workflow: cannot prefetch model {n} after {}: {e}",
                        model.id
                    );
                    return Ok(None);
                }
            },
        },
    };
    Ok((next.id != model.id).then_some(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Workflows, ConfigError> {
        #[derive(Deserialize)]
        struct File {
            workflows: Vec<WorkflowSection>,
        }
        let f: File = toml::from_str(toml_text).expect("toml");
        Workflows::from_sections(f.workflows)
    }

    #[test]
    fn each_model_is_followed_by_the_next_one_of_its_workflow() {
        let w = parse(
            "[[workflows]]\nmodels = [\"small.gguf\", \"coder\", \"small\"]\n\
             [[workflows]]\nmodels = [\"vision\", \"small\"]\n",
        )
        .unwrap();
        assert_eq!(w.after("small"), Some("coder"));
        assert_eq!(w.after("coder"), Some("small"));
        assert_eq!(w.after("vision"), Some("small"));
        assert_eq!(w.after("other"), None);
        assert!(!w.is_empty());
        assert!(Workflows::from_sections(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn ambiguous_or_malformed_workflows_are_refused() {
        let both = parse(
            "[[workflows]]\nmodels = [\"a\", \"b\"]\n[[workflows]]\nmodels = [\"a\", \"c\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(both.contains("followed by both"), "{both}");
        let one = parse("[[workflows]]\nmodels = [\"a\"]\n")
            .unwrap_err()
            .to_string();
        assert!(one.contains("two at least"), "{one}");
        let path = parse("[[workflows]]\nmodels = [\"a\", \"../b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(path.contains("not a model name"), "{path}");
        // The same pair twice is no ambiguity.
        assert!(parse("[[workflows]]\nmodels = [\"a\", \"b\", \"a\", \"b\"]\n").is_ok());
    }
}
