//! `edge-llm generate`: text after a prompt, streamed as whole characters arrive.

use super::shared::{with_lm, LmArgs};
use crate::eval::{self, Sampling};
use crate::{Error, Result};
use serde_json::json;
use std::io::Write;
use std::time::Instant;

// (A doc comment here would replace the subcommand's help.)
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    lm: LmArgs,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sample from the early exits' voted distribution (max, mean, majority, last;
    /// default max when the adapter has exits), on the chosen --device.
    #[arg(long)]
    vote: Option<crate::vote::Vote>,
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let Args {
        lm,
        prompt,
        chat,
        max_tokens,
        temperature,
        top_p,
        seed,
        vote,
        json,
    } = a;
    if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 || temperature < 0.0 {
        return Err(Error::Invalid(
            "need 0 < --top-p <= 1 and --temperature >= 0".into(),
        ));
    }
    let (file, tok, m) = lm.load()?;
    let text = if chat {
        tok.chat_prompt(&prompt)
    } else {
        prompt
    };
    let ids = tok.encode(&text)?;
    let stop = tok.stop_tokens();
    let sampling = Sampling {
        temperature,
        top_p,
        seed,
    };
    let t0 = Instant::now();
    let mut shown = String::new();
    let mut so_far = Vec::new();
    let mut stdout = std::io::stdout();
    let has_exits = m.lora.as_ref().is_some_and(|l| !l.exits.is_empty());
    let rule = crate::vote::resolve(vote, has_exits)?;
    let mut on_token = |id| {
        if json {
            return;
        }
        so_far.push(id);
        if let Ok(s) = tok.decode(&so_far) {
            // Print only whole characters: a multi-byte char may span tokens.
            if s.len() > shown.len() && !s.ends_with('\u{FFFD}') {
                let _ = write!(stdout, "{}", &s[shown.len()..]);
                let _ = stdout.flush();
                shown = s;
            }
        }
    };
    let out = match rule {
        Some(rule) => {
            eprintln!("exit voting: {rule}");
            with_lm(lm.device, &file, &m, |lm| {
                pollster::block_on(eval::generate_voted(
                    lm,
                    &ids,
                    max_tokens,
                    &sampling,
                    rule,
                    &stop,
                    &mut on_token,
                ))
            })?
        }
        None => with_lm(lm.device, &file, &m, |lm| {
            pollster::block_on(eval::generate(
                lm,
                &ids,
                max_tokens,
                &sampling,
                &stop,
                &mut on_token,
            ))
        })?,
    };
    let secs = t0.elapsed().as_secs_f64();
    let text = tok.decode(&out)?;
    if json {
        println!(
            "{}",
            json!({"text": text, "tokens": out.len(), "tokens_per_s": out.len() as f64 / secs})
        );
    } else {
        if text.len() > shown.len() {
            print!("{}", &text[shown.len()..]);
        }
        println!();
        eprintln!(
            "[{} tokens, {:.1} tokens/s]",
            out.len(),
            out.len() as f64 / secs
        );
    }
    Ok(())
}
