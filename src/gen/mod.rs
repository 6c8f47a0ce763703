//! Deterministic synthetic national-scale data: `qualcache gen`.
//!
//! Writes `enrollees.csv` (the CSV store) and `probes.jsonl` (lookups with
//! their expected answers). The same seed gives the same bytes. Shares
//! follow domain.md: 協会けんぽ 39, union 29, NHI 29, late-stage elderly 17,
//! mutual aid 9, medical aid 2 (parts of 125). Every edge case the lookup
//! semantics know is produced: 6- and 8-digit insurers, full-width and
//! kanji symbols, scheme 39 without symbol, families with branch numbers
//! (and twins, for multiple hits), job changes, medical aid (registered or
//! not), withdrawn and restricted cards, age-dependent ratios and limits.

use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde::Serialize;

use crate::model::{
    Branch, CardClass, CardKey, CardLink, CardSerial, CardStatus, Certificate, Date, DiseaseKind,
    ElderlyCertificate, EnrolleeRecord, KeyText, LimitCategory, Loss, LossReason, PayerNumber,
    Percent, PublicExpense, Qualification, RecipientNumber, Relation, Sex, SpecificDisease, Status,
};
use crate::store::csv::CsvWriter;
use insurers::{insurer_pool, Insurer, Kind, KINDS};
use names::{FAMILY, FEMALE, MALE};
use probes::Expect;
pub use probes::CASES;

mod insurers;
mod names;
mod probes;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Qualification rows to write.
    pub records: u64,
    /// PRNG seed.
    pub seed: u64,
    /// Output directory.
    pub out: PathBuf,
    /// Probes to aim for (every case gets its share).
    pub probes: usize,
    /// The reference day: data is "as of" this day, and so are most probes.
    pub as_of: Date,
    /// Key for the card digests written to the CSV.
    pub card_key: CardKey,
    /// Told the records written, of `records`.
    pub progress: crate::progress::Progress,
}

/// What `gen` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct GenSummary {
    /// The CSV.
    pub csv: PathBuf,
    /// The probes.
    pub probes: PathBuf,
    /// Rows written.
    pub records: u64,
    /// Persons written.
    pub persons: u64,
    /// Probes written.
    pub probe_count: usize,
    /// Seconds taken.
    pub seconds: f64,
}

/// SplitMix64: tiny, fast, and fixed forever, so a seed's output never
/// changes with a dependency upgrade.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A household member being generated.
struct Member {
    birth: Date,
    sex: Sex,
    relation: Relation,
    branch: u8,
}

struct Generator<W: Write> {
    rng: Rng,
    opts: GenOptions,
    insurers: Vec<Insurer>,
    /// Insurer indexes per kind, for drawing.
    by_kind: Vec<(Kind, Vec<usize>)>,
    csv: CsvWriter<W>,
    probes: BufWriter<std::fs::File>,
    rows: u64,
    persons: u64,
    per_case: usize,
    emitted: Vec<usize>,
    probe_count: usize,
    /// Probability of sampling an ordinary case on a chance.
    common_rate: f64,
    /// The current household head's qualification (for household probes).
    current_head: Option<Qualification>,
}

/// Generates the data set.
///
/// Both files are written under temporary names in the output directory
/// (`.enrollees.csv.tmp`, `.probes.jsonl.tmp`), synced, and renamed into
/// place when complete, `probes.jsonl` first: an `enrollees.csv` that
/// exists is always whole, and so is the `probes.jsonl` beside it. A run
/// killed half-way leaves only the temporary files (the next run
/// replaces them). The files are created with mode [`DATA_MODE`].
pub fn generate(opts: &GenOptions) -> anyhow::Result<GenSummary> {
    use anyhow::Context;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let csv_path = opts.out.join("enrollees.csv");
    let probes_path = opts.out.join("probes.jsonl");
    let csv_tmp = opts.out.join(".enrollees.csv.tmp");
    let probes_tmp = opts.out.join(".probes.jsonl.tmp");
    // Fresh files, so they get this run's mode whatever a killed run left.
    let _ = std::fs::remove_file(&csv_tmp);
    let _ = std::fs::remove_file(&probes_tmp);
    let written = generate_into(opts, &csv_tmp, &probes_tmp).and_then(|summary| {
        std::fs::rename(&probes_tmp, &probes_path)
            .with_context(|| format!("renaming {}", probes_tmp.display()))?;
        std::fs::rename(&csv_tmp, &csv_path)
            .with_context(|| format!("renaming {}", csv_tmp.display()))?;
        std::fs::File::open(&opts.out)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", opts.out.display()))?;
        Ok(summary)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&csv_tmp);
        let _ = std::fs::remove_file(&probes_tmp);
    }
    Ok(GenSummary {
        csv: csv_path,
        probes: probes_path,
        ..written?
    })
}

/// The mode of the generated files (less what the umask clears): owner
/// read-write, group read. They hold names, birth dates and, in the
/// probes, card serials.
pub const DATA_MODE: u32 = 0o640;

/// Writes the data set to `csv_path` and `probes_path` and syncs them
/// (created with [`DATA_MODE`]; the CSV by [`CsvWriter::create`]).
fn generate_into(
    opts: &GenOptions,
    csv_path: &std::path::Path,
    probes_path: &std::path::Path,
) -> anyhow::Result<GenSummary> {
    use anyhow::Context;
    let started = std::time::Instant::now();
    let csv =
        CsvWriter::create(csv_path).with_context(|| format!("creating {}", csv_path.display()))?;
    let probes = BufWriter::new(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(DATA_MODE)
            .open(probes_path)
            .with_context(|| format!("creating {}", probes_path.display()))?,
    );
    let insurers = insurer_pool();
    let by_kind = KINDS
        .iter()
        .map(|&(k, _)| {
            let idx = insurers
                .iter()
                .enumerate()
                .filter(|(_, i)| i.kind == k)
                .map(|(i, _)| i)
                .collect();
            (k, idx)
        })
        .collect();
    let per_case = (opts.probes / CASES.len()).max(1);
    let mut g = Generator {
        rng: Rng(opts.seed ^ 0x5157_4C43_4143_4845),
        opts: opts.clone(),
        insurers,
        by_kind,
        csv,
        probes,
        rows: 0,
        persons: 0,
        per_case,
        emitted: vec![0; CASES.len()],
        probe_count: 0,
        common_rate: ((opts.probes as f64 * 4.0) / opts.records.max(1) as f64).min(1.0),
        current_head: None,
    };
    opts.progress.stage(
        &format!("generating {}", opts.out.join("enrollees.csv").display()),
        Some(opts.records),
        crate::progress::Unit::Records,
    );
    let mut reported = 0;
    while g.rows < opts.records {
        g.household()?;
        if g.rows - reported >= 1 << 14 {
            opts.progress.advance(g.rows - reported);
            reported = g.rows;
        }
    }
    opts.progress.advance(g.rows - reported);
    let sync = |w: BufWriter<std::fs::File>, path: &std::path::Path| {
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))
    };
    sync(g.csv.finish()?, csv_path)?;
    sync(g.probes, probes_path)?;
    Ok(GenSummary {
        csv: csv_path.to_path_buf(),
        probes: probes_path.to_path_buf(),
        records: g.rows,
        persons: g.persons,
        probe_count: g.probe_count,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl<W: Write> Generator<W> {
    fn left(&self) -> u64 {
        self.opts.records - self.rows
    }

    fn draw_kind(&mut self) -> Kind {
        let mut r = self.rng.below(125);
        for &(k, w) in KINDS {
            if r < w {
                return k;
            }
            r -= w;
        }
        Kind::Kyokai
    }

    fn draw_insurer(&mut self, kind: Kind) -> usize {
        let list = &self
            .by_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("every kind has insurers")
            .1;
        list[self.rng.below(list.len() as u64) as usize]
    }

    fn birth_for_age(&mut self, min: i32, max: i32) -> Date {
        let age = min + self.rng.below((max - min + 1) as u64) as i32;
        self.opts
            .as_of
            .add_years(-age)
            .add_days(-(self.rng.below(365) as i32))
    }

    /// Writes one household: an insured person and dependents sharing the
    /// insurer, symbol and number with their own branch numbers.
    fn household(&mut self) -> io::Result<()> {
        let kind = self.draw_kind();
        let ins = self.draw_insurer(kind);
        let (min_age, max_age) = match kind {
            Kind::Elderly => (75, 100),
            Kind::MedicalAid => (20, 90),
            Kind::Nhi => (20, 74),
            _ => (22, 69),
        };
        let head_birth = self.birth_for_age(min_age, max_age);
        let mut members = vec![Member {
            birth: head_birth,
            sex: if self.rng.chance(0.5) {
                Sex::Male
            } else {
                Sex::Female
            },
            relation: Relation::Insured,
            branch: 0,
        }];
        let family = !matches!(kind, Kind::Elderly | Kind::MedicalAid) && self.left() > 4;
        if family && self.rng.chance(0.45) {
            let spouse_birth = head_birth.add_days(self.rng.below(3000) as i32 - 1500);
            members.push(Member {
                birth: spouse_birth.min(self.opts.as_of.add_years(-18)),
                sex: if members[0].sex == Sex::Male {
                    Sex::Female
                } else {
                    Sex::Male
                },
                relation: Relation::Dependent,
                branch: 1,
            });
            let children = self.rng.below(3);
            let twins = self.rng.chance(0.02);
            for c in 0..children {
                let birth = if twins && c == 1 {
                    members[members.len() - 1].birth
                } else {
                    self.birth_for_age(0, 20).max(head_birth.add_years(20))
                };
                let branch = members.len() as u8;
                members.push(Member {
                    birth: birth.min(self.opts.as_of),
                    sex: if self.rng.chance(0.5) {
                        Sex::Male
                    } else {
                        Sex::Female
                    },
                    relation: Relation::Dependent,
                    branch,
                });
            }
        }
        // Symbol: 協会けんぽ an office code, unions a small number, NHI a
        // municipal code sometimes in kanji, mutual aid kanji; none for 39
        // and medical aid.
        let symbol = match kind {
            Kind::Kyokai => Some(format!("{}", 1_000_000 + self.rng.below(9_000_000))),
            Kind::Union => Some(format!("{}", 1 + self.rng.below(40))),
            Kind::Nhi if self.rng.chance(0.3) => Some(format!(
                "{}{}",
                self.rng.pick(&["市", "町", "村"]),
                1 + self.rng.below(20)
            )),
            Kind::Nhi => Some(format!("{:03}", self.rng.below(1000))),
            Kind::Mutual => Some(format!(
                "{}{}",
                self.rng.pick(&["教", "警", "地"]),
                1 + self.rng.below(99)
            )),
            Kind::Elderly | Kind::MedicalAid => None,
        };
        let insurer = &mut self.insurers[ins];
        let number = match kind {
            Kind::Elderly => format!("{:08}", insurer.next_number),
            Kind::MedicalAid => format!("{:07}", insurer.next_number % 10_000_000),
            _ => format!("{}", insurer.next_number),
        };
        insurer.next_number += 1;
        let twins = members
            .windows(2)
            .find(|w| w[0].branch > 0 && w[0].birth == w[1].birth)
            .map(|w| w[0].birth);
        let mut written = 0;
        for m in &members {
            if self.left() == 0 {
                break;
            }
            self.person(kind, ins, symbol.as_deref(), &number, m, members.len() == 1)?;
            written += 1;
        }
        if let (Some(birth), true) = (twins, written == members.len()) {
            // Twins share insurer, symbol, number and birth date: without a
            // branch both match.
            let head = self.current_head.clone();
            if let Some(q) = head {
                let expect = Expect {
                    matches: Some(2),
                    ..Expect::status(Status::MultipleHits)
                };
                self.probe_key(
                    "ins_multiple",
                    &q,
                    None,
                    false,
                    birth,
                    self.opts.as_of,
                    expect,
                )?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn person(
        &mut self,
        kind: Kind,
        ins: usize,
        symbol: Option<&str>,
        number: &str,
        m: &Member,
        alone: bool,
    ) -> io::Result<()> {
        self.persons += 1;
        let person_id = self.persons;
        let as_of = self.opts.as_of;
        let age = as_of.years_since(m.birth);
        let female = m.sex == Sex::Female;
        let (fam, fam_k) = *self.rng.pick(FAMILY);
        let (given, given_k) = *self.rng.pick(if female { FEMALE } else { MALE });
        let name = format!("{fam}\u{3000}{given}");
        let kana = format!("{fam_k}\u{3000}{given_k}");
        let serial = format!("{:016X}", self.rng.next());
        let canonical: CardSerial = serial.parse().expect("16 hexadecimal digits");
        let card_status = {
            let r = self.rng.below(1000);
            match r {
                0..=1 => Some(CardStatus::Restricted),
                2..=11 => Some(CardStatus::Withdrawn),
                12..=731 => Some(CardStatus::Registered),
                _ => None,
            }
        };
        let card = card_status.map(|status| CardLink {
            digest: self.opts.card_key.digest(&canonical),
            status,
        });

        // History: a job change (old qualification lost, reason 03), medical
        // aid after NHI (reason 02), or a qualification lost with nothing new.
        let earliest = m.birth.max(as_of.add_years(-30));
        let span = (as_of.day_number() - earliest.day_number()).max(2) as u64;
        let mut acquired = if m.relation == Relation::Dependent && age < 20 {
            m.birth
        } else {
            earliest.add_days(self.rng.below(span / 2) as i32)
        };
        if kind == Kind::Elderly {
            acquired = m
                .birth
                .add_years(75)
                .max(Date::from_ymd(2008, 4, 1).unwrap_or(acquired))
                .min(as_of);
        }
        let history = m.relation == Relation::Insured && self.left() >= 2;
        let job_change =
            history && kind != Kind::Elderly && kind != Kind::MedicalAid && self.rng.chance(0.05);
        let welfare = history && kind == Kind::MedicalAid && self.rng.chance(0.5);
        let only_lost = !job_change && !welfare && self.rng.chance(0.01);

        let mut rows: Vec<(EnrolleeRecord, bool)> = Vec::new();
        if job_change || welfare {
            // Leave room for the old qualification before the switch.
            acquired = acquired.max(m.birth.add_days(400)).min(as_of);
            let old_kind = if welfare {
                Kind::Nhi
            } else {
                self.draw_kind_for_job()
            };
            let old_ins = self.draw_insurer(old_kind);
            let start = earliest.min(acquired.add_days(-400));
            let switch = acquired;
            let old_symbol = if old_kind == Kind::Nhi {
                Some(format!("{:03}", self.rng.below(1000)))
            } else {
                Some(format!("{}", 1 + self.rng.below(40)))
            };
            let old_number = format!("{}", self.insurers[old_ins].next_number);
            self.insurers[old_ins].next_number += 1;
            let reason = if welfare {
                LossReason::WelfareStarted
            } else {
                LossReason::JoinedOtherInsurance
            };
            let old = self.qualification(
                old_kind,
                old_ins,
                old_symbol.as_deref(),
                &old_number,
                m,
                &name,
                &kana,
                start.max(m.birth),
                Some(Loss {
                    date: switch,
                    reason,
                }),
                card,
            );
            rows.push((
                EnrolleeRecord {
                    person_id,
                    card,
                    qualification: old,
                },
                false,
            ));
        }
        let loss = only_lost.then(|| Loss {
            date: as_of
                .add_days(-(1 + self.rng.below(300) as i32))
                .max(acquired.add_days(1)),
            reason: if age > 80 {
                LossReason::Death
            } else {
                LossReason::Other
            },
        });
        let current = self.qualification(
            kind, ins, symbol, number, m, &name, &kana, acquired, loss, card,
        );
        rows.push((
            EnrolleeRecord {
                person_id,
                card,
                qualification: current,
            },
            self.rng.chance(0.1),
        ));

        for (rec, full_width) in &rows {
            self.csv.write_styled(rec, *full_width)?;
            self.rows += 1;
        }
        if m.relation == Relation::Insured {
            self.current_head = Some(rows[rows.len() - 1].0.qualification.clone());
        }
        self.person_probes(&rows, &serial, alone)
    }

    fn draw_kind_for_job(&mut self) -> Kind {
        *self
            .rng
            .pick(&[Kind::Kyokai, Kind::Union, Kind::Nhi, Kind::Mutual])
    }

    #[allow(clippy::too_many_arguments)]
    fn qualification(
        &mut self,
        kind: Kind,
        ins: usize,
        symbol: Option<&str>,
        number: &str,
        m: &Member,
        name: &str,
        kana: &str,
        acquired: Date,
        loss: Option<Loss>,
        card: Option<CardLink>,
    ) -> Qualification {
        let as_of = self.opts.as_of;
        // The record describes the qualification on its last day (the
        // day before its loss, or the reference day): ratios, limit
        // categories and the elderly certificate follow the age then, so
        // no row breaks a rule of `model::rules`.
        let last_day = loss.map_or(as_of, |l| l.date.add_days(-1)).min(as_of);
        let age = last_day.years_since(m.birth);
        let insurer = &self.insurers[ins];
        let medical_aid = kind == Kind::MedicalAid;
        let registered_card = card.is_some_and(|c| c.status == CardStatus::Registered);
        let copay = match age {
            _ if medical_aid => Percent::Zero,
            0..=5 => Percent::Twenty,
            6..=69 => Percent::Thirty,
            70..=74 if self.rng.chance(0.1) => Percent::Thirty,
            70..=74 => Percent::Twenty,
            _ if self.rng.chance(0.08) => Percent::Thirty,
            _ if self.rng.chance(0.2) => Percent::Twenty,
            _ => Percent::Ten,
        };
        let limit_category = if age >= 70 {
            Some(*self.rng.pick(&[
                LimitCategory::B01,
                LimitCategory::B02,
                LimitCategory::B03,
                LimitCategory::B04,
                LimitCategory::B04,
                LimitCategory::B05,
                LimitCategory::B06,
            ]))
        } else if !medical_aid && age < 69 && self.rng.chance(0.3) {
            // Not at 69: built a year later, the person may be 70.
            Some(*self.rng.pick(&[
                LimitCategory::A01,
                LimitCategory::A02,
                LimitCategory::A03,
                LimitCategory::A03,
                LimitCategory::A04,
                LimitCategory::A05,
            ]))
        } else {
            None
        };
        let elderly = ((70..=74).contains(&age) && elderly_start(m.birth) <= last_day).then(|| {
            ElderlyCertificate {
                valid_from: elderly_start(m.birth),
                valid_until: m.birth.add_years(75).add_days(-1),
                percent: if copay == Percent::Thirty {
                    Percent::Thirty
                } else {
                    Percent::Twenty
                },
            }
        });
        let certificate = (!registered_card && !medical_aid).then(|| {
            let issued = as_of.add_days(-(self.rng.below(700) as i32)).max(acquired);
            Certificate {
                issued,
                valid_from: issued,
                valid_until: issued.add_years(5).add_days(-1),
            }
        });
        let specific_disease = self.rng.chance(0.003).then(|| {
            let kind = *self.rng.pick(&[
                DiseaseKind::Dialysis,
                DiseaseKind::Dialysis,
                DiseaseKind::Haemophilia,
                DiseaseKind::HivFromBloodProducts,
            ]);
            SpecificDisease {
                kind,
                monthly_cap_yen: if kind == DiseaseKind::Dialysis
                    && age < 70
                    && self.rng.chance(0.3)
                {
                    20_000
                } else {
                    10_000
                },
            }
        });
        let public_expense = medical_aid.then(|| PublicExpense {
            payer: PayerNumber::from_value(insurer.number.value())
                .expect("medical-aid insurers are built from valid payer numbers"),
            recipient: RecipientNumber::from_value(number.parse().unwrap_or(0))
                .expect("recipient numbers have 7 digits"),
            welfare_office: insurer.name.clone(),
            registered: !self.rng.chance(0.2),
        });
        let to_key = |s: &str| s.parse::<KeyText>().ok();
        Qualification {
            insurer_number: insurer.number,
            insurer_name: insurer.name.clone(),
            card_class: if medical_aid {
                CardClass::MedicalAid
            } else {
                CardClass::General
            },
            symbol: symbol.and_then(to_key),
            number: to_key(number).expect("generated numbers are digits"),
            branch: if medical_aid || kind == Kind::Elderly {
                None
            } else {
                Branch::new(m.branch)
            },
            relation: m.relation,
            name: name.to_string(),
            name_kana: kana.to_string(),
            sex: m.sex,
            birth_date: m.birth,
            acquired_date: acquired,
            loss,
            certificate,
            copay_percent: copay,
            preschool: age < 6,
            elderly,
            limit_category,
            specific_disease,
            public_expense,
        }
    }
}

/// When an elderly recipient certificate starts: the first day of the
/// month after the 70th birthday, or the birthday itself when it falls on
/// the first of a month.
fn elderly_start(birth: Date) -> Date {
    let seventy = birth.add_years(70);
    let (y, m, d) = seventy.ymd();
    if d == 1 {
        return seventy;
    }
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Date::from_ymd(y, m, 1).unwrap_or(seventy)
}
