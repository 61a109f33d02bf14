//! `rstwatch explain`: the runbook, from the table the classifier uses.

use crate::classify::causes;

pub fn explain(cause: Option<&str>) -> anyhow::Result<()> {
    let selected: Vec<_> = match cause {
        None => causes::CAUSES.iter().collect(),
        Some(label) => {
            let cause = causes::Cause::from_label(label).ok_or_else(|| {
                let known: Vec<_> = causes::CAUSES.iter().map(|info| info.label).collect();
                anyhow::anyhow!("unknown cause {label:?}; causes are: {}", known.join(", "))
            })?;
            vec![cause.info()]
        }
    };
    for info in selected {
        let directions: Vec<_> = info.directions.iter().map(|d| d.label()).collect();
        println!(
            "{} ({})\n  what happened:  {}\n  who sees what:  {}\n  what to do:     {}\n",
            info.label,
            directions.join(", "),
            info.meaning,
            info.app_error,
            info.remedy
        );
    }
    Ok(())
}
