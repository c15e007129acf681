//! The TOML schedule file: what it accepts, and how it reports what it does not.

// Wrapped in `mod beat` so `cargo test -p openthreat-queue beat` selects these tests.
mod beat {
    use std::time::Duration;

    use openthreat_queue::beat::{
        check_tasks, default_schedule, load_schedule_file, parse_schedule, BeatError, ConfigError,
        Schedule,
    };
    use serde_json::json;

    const KNOWN: &[&str] = &[
        "tasks.process_llm_queue",
        "tasks.process_new_cves",
        "backend.tasks.test_task",
        "backend.tasks.update_vulnerabilities_task",
        "backend.tasks.update_stats_cache_task",
        "backend.tasks.clean_cache_task",
    ];

    fn errors(source: &str) -> Vec<ConfigError> {
        match parse_schedule(source, KNOWN) {
            Err(BeatError::Config { errors, .. }) => errors,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    /// The single error of a file with exactly one problem.
    fn one_error(source: &str) -> ConfigError {
        let mut errs = errors(source);
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.remove(0)
    }

    #[test]
    fn the_documented_example_loads() {
        let source = r#"
timezone = "UTC"

[schedule.process-high-priority]
task = "tasks.process_llm_queue"
cron = "*/10 * * * *"
kwargs = { batch_size = 10, priority = "high" }

[schedule.heartbeat]
task = "backend.tasks.test_task"
args = ["tick"]
every = "30s"          # or "1s", "5m", "2h"
enabled = true         # optional; false keeps the entry but never fires it
queue = "celery"
priority = 5
expires = 25

[schedule.paris-report]
task = "backend.tasks.test_task"
cron = "0 8 * * mon-fri"
timezone = "Europe/Paris"
enabled = false
"#;
        let entries = parse_schedule(source, KNOWN).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        // File order, not alphabetical.
        assert_eq!(
            names,
            ["process-high-priority", "heartbeat", "paris-report"]
        );

        let high = &entries[0];
        assert_eq!(high.task, "tasks.process_llm_queue");
        assert_eq!(high.schedule.to_string(), "*/10 * * * *");
        assert_eq!(
            serde_json::Value::Object(high.kwargs.clone()),
            json!({"batch_size": 10, "priority": "high"})
        );
        assert!(high.enabled);

        let hb = &entries[1];
        assert_eq!(hb.args, vec![json!("tick")]);
        assert!(matches!(hb.schedule, Schedule::Interval(_)));
        assert_eq!(hb.schedule.describe(), "every 30 seconds");
        assert_eq!(hb.options.queue.as_deref(), Some("celery"));
        assert_eq!(hb.options.priority, Some(5));
        assert_eq!(hb.options.expires, Some(Duration::from_secs(25)));

        let paris = &entries[2];
        assert!(!paris.enabled);
        match &paris.schedule {
            Schedule::Crontab(c) => assert_eq!(c.timezone().name(), "Europe/Paris"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_accepts_a_number_of_seconds() {
        let entries = parse_schedule(
            "[schedule.x]\ntask = \"backend.tasks.test_task\"\nevery = 45\n",
            KNOWN,
        )
        .unwrap();
        assert_eq!(entries[0].schedule.describe(), "every 45 seconds");
    }

    #[test]
    fn invalid_crontab_field_reports_entry_line_and_field() {
        let e = one_error(
        "# comment\n\n[schedule.nightly]\ntask = \"backend.tasks.clean_cache_task\"\ncron = \"0 25 * * *\"\n",
    );
        assert_eq!(e.entry.as_deref(), Some("nightly"));
        assert_eq!(e.line, 5);
        assert!(e.reason.contains("hour `25`"), "{}", e.reason);
        assert!(e.reason.contains("out of range 0-23"), "{}", e.reason);
    }

    #[test]
    fn both_or_neither_schedule() {
        let e = one_error(
        "[schedule.a]\ntask = \"backend.tasks.test_task\"\ncron = \"* * * * *\"\nevery = \"5m\"\n",
    );
        assert_eq!((e.entry.as_deref(), e.line), (Some("a"), 4));
        assert!(e.reason.contains("both `cron` and `every`"), "{}", e.reason);

        let e = one_error("\n[schedule.b]\ntask = \"backend.tasks.test_task\"\n");
        assert_eq!((e.entry.as_deref(), e.line), (Some("b"), 2));
        assert!(e.reason.contains("no schedule"), "{}", e.reason);
    }

    #[test]
    fn negative_and_zero_intervals() {
        let e = one_error("[schedule.neg]\ntask = \"backend.tasks.test_task\"\nevery = \"-5m\"\n");
        assert_eq!((e.entry.as_deref(), e.line), (Some("neg"), 3));
        assert!(e.reason.contains("positive"), "{}", e.reason);

        let e = one_error("[schedule.neg]\ntask = \"backend.tasks.test_task\"\nevery = -30\n");
        assert!(e.reason.contains("positive"), "{}", e.reason);

        let e = one_error("[schedule.zero]\ntask = \"backend.tasks.test_task\"\nevery = \"0s\"\n");
        assert!(e.reason.contains("at least 1 second"), "{}", e.reason);
    }

    #[test]
    fn unknown_keys_carry_entry_and_line() {
        let e = one_error(
        "[schedule.first]\ntask = \"backend.tasks.test_task\"\nevery = \"1m\"\n\n[schedule.second]\ntask = \"backend.tasks.test_task\"\nevery = \"1m\"\nkwrags = { a = 1 }\n",
    );
        assert_eq!(e.entry.as_deref(), Some("second"));
        assert_eq!(e.line, 8);
        assert!(e.reason.contains("unknown field `kwrags`"), "{}", e.reason);

        let e = one_error("timezon = \"UTC\"\n");
        assert_eq!((e.entry, e.line), (None, 1));
    }

    #[test]
    fn wrong_types_and_syntax_errors_carry_lines() {
        let e = one_error("[schedule.t]\ntask = 5\nevery = \"1m\"\n");
        assert_eq!((e.entry.as_deref(), e.line), (Some("t"), 2));

        let e = one_error("[schedule.t]\ntask = \"backend.tasks.test_task\"\nevery = \"1m\n");
        assert_eq!(e.line, 3);

        let e = one_error(
            "[schedule.t]\ntask = \"backend.tasks.test_task\"\nevery = \"1m\"\n[schedule.t]\n",
        );
        assert_eq!(e.line, 4);
    }

    #[test]
    fn unknown_task_names_are_reported() {
        let e = one_error("[schedule.typo]\ntask = \"tasks.proces_new_cves\"\nevery = \"5m\"\n");
        assert_eq!((e.entry.as_deref(), e.line), (Some("typo"), 2));
        assert!(
            e.reason.contains("unknown task `tasks.proces_new_cves`"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn all_problems_are_reported_at_once_in_line_order() {
        let source = r#"
[schedule.a]
task = "nope"
cron = "61 * * * *"

[schedule.b]
task = "backend.tasks.test_task"
every = "5m"
priority = 12
expires = -1

[schedule.c]
task = "backend.tasks.test_task"
cron = "0 3 * * *"
timezone = "Mars/Olympus"
"#;
        let errs = errors(source);
        let got: Vec<(Option<&str>, usize)> =
            errs.iter().map(|e| (e.entry.as_deref(), e.line)).collect();
        assert_eq!(
            got,
            vec![
                (Some("a"), 3),
                (Some("a"), 4),
                (Some("b"), 9),
                (Some("b"), 10),
                (Some("c"), 15)
            ]
        );
        let full = parse_schedule(source, KNOWN).unwrap_err().to_string();
        assert!(
            full.contains("line 4: entry `a`: invalid crontab minute `61`"),
            "{full}"
        );
        assert!(full.contains("unknown time zone `Mars/Olympus`"), "{full}");
    }

    #[test]
    fn load_from_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schedule.toml");
        std::fs::write(
            &path,
            "[schedule.x]\ntask = \"backend.tasks.test_task\"\nevery = \"5x\"\n",
        )
        .unwrap();
        let err = load_schedule_file(&path, KNOWN).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("schedule.toml"), "{msg}");
        assert!(
            msg.contains("line 3: entry `x`: invalid interval `5x`"),
            "{msg}"
        );

        std::fs::write(
            &path,
            "[schedule.x]\ntask = \"backend.tasks.test_task\"\nevery = \"5m\"\n",
        )
        .unwrap();
        assert_eq!(load_schedule_file(&path, KNOWN).unwrap().len(), 1);

        let missing = load_schedule_file(&dir.path().join("nope.toml"), KNOWN).unwrap_err();
        assert!(matches!(missing, BeatError::Io { .. }));
    }

    #[test]
    fn check_tasks_on_the_default_schedule() {
        assert!(check_tasks(&default_schedule(), KNOWN).is_ok());
        let only_some = ["backend.tasks.update_vulnerabilities_task"];
        match check_tasks(&default_schedule(), &only_some) {
            Err(BeatError::UnknownTasks(unknown)) => {
                let names: Vec<&str> = unknown.iter().map(|u| u.entry.as_str()).collect();
                assert_eq!(
                    names,
                    [
                        "process-new-cves",
                        "process-high-priority",
                        "process-medium-priority",
                        "process-low-priority",
                        "update-stats-cache",
                        "clean-cache"
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_option_types_are_reported_in_our_words_with_the_rest() {
        let source =
            "[schedule.a]\ntask = \"nope\"\nevery = 1.5\npriority = \"high\"\nexpires = \"soon\"\n";
        let errs = errors(source);
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.reason.as_str())).collect();
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].1.contains("unknown task `nope`"), "{got:?}");
        assert!(got[1].1.contains("whole number of seconds"), "{got:?}");
        assert_eq!(
            got[2],
            (4, "priority must be a whole number 0-9, not \"high\"")
        );
        assert!(
            got[3].1.starts_with("expires must be a positive number"),
            "{got:?}"
        );
    }
}
