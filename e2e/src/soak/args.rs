//! `husk-soak`'s command line: `--cycles N [--parallel P] [--cri]`.

/// What the soak was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Cycles in all (over all workers).
    pub cycles: usize,
    /// Workers running cycles at once.
    pub parallel: usize,
    /// Alternate ctr cycles with CRI pod cycles.
    pub cri: bool,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            cycles: 30,
            parallel: 1,
            cri: false,
        }
    }
}

/// A bad command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// An option that needs a value came last.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// A value that is not a positive whole number.
    #[error("{option} {value:?}: expected a whole number of at least 1")]
    BadNumber {
        /// The option.
        option: String,
        /// What was given.
        value: String,
    },
    /// An argument the soak does not know.
    #[error("unknown argument {0:?} (usage: husk-soak --cycles N [--parallel P] [--cri])")]
    Unknown(String),
}

fn positive(option: &str, value: &str) -> Result<usize, ArgsError> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ArgsError::BadNumber {
            option: option.to_string(),
            value: value.to_string(),
        }),
    }
}

impl Plan {
    /// Parses the arguments after the program name; `--opt=value` and `--opt value` both work.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, ArgsError> {
        let mut plan = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (option, inline) = match arg.split_once('=') {
                Some((o, v)) => (o.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = |option: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| ArgsError::MissingValue(option.to_string()))
            };
            match option.as_str() {
                "--cycles" => plan.cycles = positive(&option, &value(&option)?)?,
                "--parallel" => plan.parallel = positive(&option, &value(&option)?)?,
                "--cri" if inline.is_none() => plan.cri = true,
                _ => return Err(ArgsError::Unknown(arg)),
            }
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Plan, ArgsError> {
        Plan::parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_are_30_cycles_one_worker_ctr_only() {
        assert_eq!(parse(&[]), Ok(Plan::default()));
        assert_eq!(
            Plan::default(),
            Plan {
                cycles: 30,
                parallel: 1,
                cri: false
            }
        );
    }

    #[test]
    fn options_take_values_both_ways() {
        assert_eq!(
            parse(&["--cycles", "500", "--parallel=4", "--cri"]),
            Ok(Plan {
                cycles: 500,
                parallel: 4,
                cri: true
            })
        );
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        assert_eq!(
            parse(&["--cycles"]),
            Err(ArgsError::MissingValue("--cycles".into()))
        );
        assert!(matches!(
            parse(&["--parallel", "0"]),
            Err(ArgsError::BadNumber { .. })
        ));
        assert!(matches!(
            parse(&["--cycles", "ten"]),
            Err(ArgsError::BadNumber { .. })
        ));
        assert_eq!(
            parse(&["--cri=yes"]),
            Err(ArgsError::Unknown("--cri=yes".into()))
        );
        assert_eq!(parse(&["-x"]), Err(ArgsError::Unknown("-x".into())));
    }
}
