//! Crontab and interval schedules: parsing, next-slot computation, words.

// Wrapped in `mod beat` so `cargo test -p openthreat-queue beat` selects these tests.
mod beat {
    use chrono::{DateTime, Datelike, TimeZone, Utc};
    use chrono_tz::Tz;
    use openthreat_queue::beat::{
        default_schedule, CronError, CronField, Crontab, Interval, Schedule,
    };

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str) -> DateTime<Utc> {
        Crontab::parse(expr).unwrap().next_after(t(after)).unwrap()
    }

    /// The first `n` slots after `after`.
    fn slots(expr: &str, after: &str, n: usize) -> Vec<DateTime<Utc>> {
        let cron = Crontab::parse(expr).unwrap();
        let mut at = t(after);
        (0..n)
            .map(|_| {
                at = cron.next_after(at).unwrap();
                at
            })
            .collect()
    }

    #[test]
    fn steps_and_ranges() {
        assert_eq!(
            next("*/10 * * * *", "2026-03-01T10:00:00Z"),
            t("2026-03-01T10:10:00Z")
        );
        assert_eq!(
            next("*/10 * * * *", "2026-03-01T10:09:59Z"),
            t("2026-03-01T10:10:00Z")
        );
        assert_eq!(
            next("*/10 * * * *", "2026-03-01T23:55:00Z"),
            t("2026-03-02T00:00:00Z")
        );
        // `a-b/n` takes every n-th value of the range: 1, 4, 7, 10.
        assert_eq!(
            slots("1-10/3 * * * *", "2026-03-01T10:00:00Z", 5),
            vec![
                t("2026-03-01T10:01:00Z"),
                t("2026-03-01T10:04:00Z"),
                t("2026-03-01T10:07:00Z"),
                t("2026-03-01T10:10:00Z"),
                t("2026-03-01T11:01:00Z"),
            ]
        );
        // Lists mix forms.
        assert_eq!(
            slots("0,30-31 8-9 * * *", "2026-03-01T00:00:00Z", 7),
            vec![
                t("2026-03-01T08:00:00Z"),
                t("2026-03-01T08:30:00Z"),
                t("2026-03-01T08:31:00Z"),
                t("2026-03-01T09:00:00Z"),
                t("2026-03-01T09:30:00Z"),
                t("2026-03-01T09:31:00Z"),
                t("2026-03-02T08:00:00Z"),
            ]
        );
        // A reversed range wraps around, as in Celery: 22, 23, 0, 1.
        assert_eq!(
            slots("0 22-1 * * *", "2026-03-01T12:00:00Z", 5),
            vec![
                t("2026-03-01T22:00:00Z"),
                t("2026-03-01T23:00:00Z"),
                t("2026-03-02T00:00:00Z"),
                t("2026-03-02T01:00:00Z"),
                t("2026-03-02T22:00:00Z"),
            ]
        );
    }

    #[test]
    fn month_ends_and_leap_years() {
        // Day 31 skips the 30-day months.
        assert_eq!(
            slots("0 0 31 * *", "2026-01-31T00:00:00Z", 3),
            vec![
                t("2026-03-31T00:00:00Z"),
                t("2026-05-31T00:00:00Z"),
                t("2026-07-31T00:00:00Z"),
            ]
        );
        // February 29 only in leap years.
        assert_eq!(
            next("0 12 29 2 *", "2026-01-01T00:00:00Z"),
            t("2028-02-29T12:00:00Z")
        );
        assert_eq!(
            next("0 12 29 2 *", "2028-02-29T12:00:00Z"),
            t("2032-02-29T12:00:00Z")
        );
        // 2100 is not a leap year.
        assert_eq!(
            next("0 0 29 2 *", "2096-03-01T00:00:00Z"),
            t("2104-02-29T00:00:00Z")
        );
        // Year end rolls over.
        assert_eq!(
            next("59 23 31 12 *", "2026-12-31T23:59:00Z"),
            t("2027-12-31T23:59:00Z")
        );
        assert_eq!(
            next("* * * * *", "2026-12-31T23:59:30Z"),
            t("2027-01-01T00:00:00Z")
        );
        // Last day of February, each year.
        assert_eq!(
            next("0 0 28-29 2 *", "2027-02-28T00:00:00Z"),
            t("2028-02-28T00:00:00Z")
        );
    }

    #[test]
    fn day_of_week_sunday_is_zero_and_names_work() {
        // 2026-03-01 is a Sunday.
        assert_eq!(t("2026-03-01T00:00:00Z").weekday(), chrono::Weekday::Sun);
        assert_eq!(
            next("0 9 * * 0", "2026-02-26T00:00:00Z"),
            t("2026-03-01T09:00:00Z")
        );
        assert_eq!(
            next("0 9 * * sun", "2026-02-26T00:00:00Z"),
            t("2026-03-01T09:00:00Z")
        );
        assert_eq!(
            next("0 9 * * Monday", "2026-03-01T00:00:00Z"),
            t("2026-03-02T09:00:00Z")
        );
        // mon-fri skips the weekend.
        assert_eq!(
            slots("0 9 * * mon-fri", "2026-03-06T10:00:00Z", 2),
            vec![t("2026-03-09T09:00:00Z"), t("2026-03-10T09:00:00Z")]
        );
        // fri-mon wraps: Fri, Sat, Sun, Mon.
        let days: Vec<_> = slots("0 0 * * fri-mon", "2026-03-02T12:00:00Z", 4)
            .iter()
            .map(|d| d.weekday())
            .collect();
        use chrono::Weekday::*;
        assert_eq!(days, vec![Fri, Sat, Sun, Mon]);
        // Month names.
        assert_eq!(
            next("0 0 1 jun *", "2026-03-01T00:00:00Z"),
            t("2026-06-01T00:00:00Z")
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_must_both_match() {
        // Celery semantics: the first Monday of the month, not "days 1-7 or any Monday".
        assert_eq!(
            slots("0 0 1-7 * mon", "2026-03-01T00:00:00Z", 3),
            vec![
                t("2026-03-02T00:00:00Z"),
                t("2026-04-06T00:00:00Z"),
                t("2026-05-04T00:00:00Z"),
            ]
        );
        // Friday the 13th.
        assert_eq!(
            next("0 0 13 * fri", "2026-03-01T00:00:00Z"),
            t("2026-03-13T00:00:00Z")
        );
        assert_eq!(
            next("0 0 13 * fri", "2026-03-13T00:00:00Z"),
            t("2026-11-13T00:00:00Z")
        );
    }

    #[test]
    fn latest_at_or_before_is_the_mirror_of_next_after() {
        let cron = Crontab::parse("*/15 * * * *").unwrap();
        assert_eq!(
            cron.latest_at_or_before(t("2026-03-01T10:14:59Z")),
            Some(t("2026-03-01T10:00:00Z"))
        );
        assert_eq!(
            cron.latest_at_or_before(t("2026-03-01T10:15:00Z")),
            Some(t("2026-03-01T10:15:00Z"))
        );
        let feb29 = Crontab::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            feb29.latest_at_or_before(t("2031-01-01T00:00:00Z")),
            Some(t("2028-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn time_zones_use_the_local_wall_clock() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let cron = Crontab::parse("0 3 * * *").unwrap().with_timezone(paris);
        // Winter: UTC+1.
        assert_eq!(
            cron.next_after(t("2026-01-10T00:00:00Z")),
            Some(t("2026-01-10T02:00:00Z"))
        );
        // Summer: UTC+2.
        assert_eq!(
            cron.next_after(t("2026-07-10T00:00:00Z")),
            Some(t("2026-07-10T01:00:00Z"))
        );
        // 02:30 does not exist on the spring-forward day (2026-03-29): skipped.
        let gap = Crontab::parse("30 2 * * *").unwrap().with_timezone(paris);
        assert_eq!(
            gap.next_after(t("2026-03-28T02:00:00Z")),
            Some(t("2026-03-30T00:30:00Z"))
        );
        // 02:30 happens twice on the fall-back day (2026-10-25): both fire.
        assert_eq!(
            gap.next_after(t("2026-10-24T23:00:00Z")),
            Some(t("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            gap.next_after(t("2026-10-25T00:30:00Z")),
            Some(t("2026-10-25T01:30:00Z"))
        );
        assert_eq!(cron.describe(), "at 03:00 every day (Europe/Paris time)");
    }

    #[test]
    fn invalid_fields_name_the_field_and_value() {
        let field_err = |expr: &str| match Crontab::parse(expr) {
            Err(CronError::Field {
                field,
                value,
                reason,
            }) => (field, value, reason),
            other => panic!("{expr}: expected a field error, got {other:?}"),
        };
        let (field, value, _) = field_err("60 * * * *");
        assert_eq!((field, value.as_str()), (CronField::Minute, "60"));
        let (field, _, _) = field_err("* 24 * * *");
        assert_eq!(field, CronField::Hour);
        let (field, _, _) = field_err("* * 0 * *");
        assert_eq!(field, CronField::DayOfMonth);
        let (field, _, _) = field_err("* * * 13 *");
        assert_eq!(field, CronField::MonthOfYear);
        let (field, value, reason) = field_err("* * * * 7");
        assert_eq!((field, value.as_str()), (CronField::DayOfWeek, "7"));
        assert!(reason.contains("Sunday is 0"), "{reason}");
        let (field, _, reason) = field_err("* * * * funday");
        assert_eq!(field, CronField::DayOfWeek);
        assert!(reason.contains("day name"), "{reason}");
        for bad in [
            "*/0 * * * *",
            "*/x * * * *",
            "5/15 * * * *",
            "1,,2 * * * *",
            "-1 * * * *",
            "a * * * *",
        ] {
            let (field, _, reason) = field_err(bad);
            assert_eq!(field, CronField::Minute, "{bad}: {reason}");
        }
        let msg = Crontab::parse("61 * * * *").unwrap_err().to_string();
        assert_eq!(msg, "invalid crontab minute `61`: 61 is out of range 0-59");

        assert!(matches!(
            Crontab::parse("* * * *"),
            Err(CronError::FieldCount { found: 4, .. })
        ));
        assert!(matches!(
            Crontab::parse(""),
            Err(CronError::FieldCount { found: 0, .. })
        ));
        // Every field valid, but February 30 never comes.
        assert!(matches!(
            Crontab::parse("0 0 30 2 *"),
            Err(CronError::Never { .. })
        ));
        assert!(matches!(
            Crontab::parse("0 0 31 4,6,9,11 *"),
            Err(CronError::Never { .. })
        ));
    }

    #[test]
    fn words() {
        let words = |expr: &str| Crontab::parse(expr).unwrap().describe();
        assert_eq!(words("* * * * *"), "every minute");
        assert_eq!(words("*/10 * * * *"), "every 10 minutes");
        assert_eq!(words("15 * * * *"), "every hour at minute 15");
        assert_eq!(words("0 */2 * * *"), "every 2 hours");
        assert_eq!(words("30 */6 * * *"), "every 6 hours at minute 30");
        assert_eq!(words("0 3 * * *"), "at 03:00 every day");
        assert_eq!(
            words("0 9 * * mon-fri"),
            "at 09:00 on Monday, Tuesday, Wednesday, Thursday and Friday"
        );
        assert_eq!(
            words("0 0 1-7 * mon"),
            "at 00:00 on day 1-7 of the month if it is a Monday"
        );
        assert_eq!(
            words("0 0 1 1,7 *"),
            "at 00:00 on day 1 of the month in January and July"
        );

        let every = |s: &str| Interval::parse(s).unwrap().describe();
        assert_eq!(every("30s"), "every 30 seconds");
        assert_eq!(every("1s"), "every second");
        assert_eq!(every("60s"), "every minute");
        assert_eq!(every("5m"), "every 5 minutes");
        assert_eq!(every("90m"), "every 90 minutes");
        assert_eq!(every("2h"), "every 2 hours");
        assert_eq!(every("1d"), "every day");
    }

    #[test]
    fn intervals_parse_and_reject() {
        assert_eq!(Interval::parse("30s").unwrap().as_duration().as_secs(), 30);
        assert_eq!(Interval::parse("5m").unwrap().as_duration().as_secs(), 300);
        assert_eq!(Interval::parse("2h").unwrap().as_duration().as_secs(), 7200);
        assert_eq!(
            Interval::parse("1d").unwrap().as_duration().as_secs(),
            86_400
        );
        assert_eq!(Interval::parse("120s").unwrap().to_string(), "2m");
        for (bad, why) in [
            ("-5m", "positive"),
            ("0s", "at least 1 second"),
            ("5", "missing unit"),
            ("1.5h", "unknown unit"),
            ("1h30m", "unknown unit"),
            ("m", "whole number"),
            ("5w", "unknown unit"),
            ("99999999999999999999s", "too large"),
        ] {
            let err = Interval::parse(bad).unwrap_err();
            assert!(err.reason.contains(why), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(Interval::from_secs(-1)
            .unwrap_err()
            .reason
            .contains("positive"));
    }

    #[test]
    fn intervals_are_anchored_to_the_epoch() {
        let every = Interval::parse("30s").unwrap();
        // Whatever the reference point, slots are multiples of 30 s.
        assert_eq!(
            every.next_after(t("2026-03-01T10:00:07Z")),
            Some(t("2026-03-01T10:00:30Z"))
        );
        assert_eq!(
            every.next_after(t("2026-03-01T10:00:30Z")),
            Some(t("2026-03-01T10:01:00Z"))
        );
        assert_eq!(
            every.latest_at_or_before(t("2026-03-01T10:00:59Z")),
            Some(t("2026-03-01T10:00:30Z"))
        );
        // Late wake-ups do not shift the series.
        let late = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 42).unwrap();
        assert_eq!(every.next_after(late), Some(t("2026-03-01T10:01:00Z")));
        let daily = Interval::parse("1d").unwrap();
        assert_eq!(
            daily.next_after(t("2026-03-01T10:00:00Z")),
            Some(t("2026-03-02T00:00:00Z"))
        );
        let seven = Interval::parse("7s").unwrap();
        let s = seven.next_after(t("2026-03-01T10:00:00Z")).unwrap();
        assert_eq!(s.timestamp() % 7, 0);
    }

    #[test]
    fn default_schedule_matches_the_design() {
        let entries = default_schedule();
        let table: Vec<(&str, &str, String, String)> = entries
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.task.as_str(),
                    e.schedule.to_string(),
                    e.schedule.describe(),
                )
            })
            .collect();
        let expected = [
            (
                "process-new-cves",
                "tasks.process_new_cves",
                "*/5 * * * *",
                "every 5 minutes",
            ),
            (
                "process-high-priority",
                "tasks.process_llm_queue",
                "*/10 * * * *",
                "every 10 minutes",
            ),
            (
                "process-medium-priority",
                "tasks.process_llm_queue",
                "*/30 * * * *",
                "every 30 minutes",
            ),
            (
                "process-low-priority",
                "tasks.process_llm_queue",
                "0 */2 * * *",
                "every 2 hours",
            ),
            (
                "update-vulnerabilities",
                "backend.tasks.update_vulnerabilities_task",
                "0 */2 * * *",
                "every 2 hours",
            ),
            (
                "update-stats-cache",
                "backend.tasks.update_stats_cache_task",
                "*/15 * * * *",
                "every 15 minutes",
            ),
            (
                "clean-cache",
                "backend.tasks.clean_cache_task",
                "0 3 * * *",
                "at 03:00 every day",
            ),
        ];
        assert_eq!(table.len(), expected.len());
        for (got, want) in table.iter().zip(expected) {
            assert_eq!((got.0, got.1, got.2.as_str(), got.3.as_str()), want);
        }
        let kwargs = |name: &str| {
            serde_json::Value::Object(
                entries
                    .iter()
                    .find(|e| e.name == name)
                    .unwrap()
                    .kwargs
                    .clone(),
            )
        };
        assert_eq!(
            kwargs("process-high-priority"),
            serde_json::json!({"batch_size": 10, "priority": "high"})
        );
        assert_eq!(
            kwargs("process-medium-priority"),
            serde_json::json!({"batch_size": 20, "priority": "medium"})
        );
        assert_eq!(
            kwargs("process-low-priority"),
            serde_json::json!({"batch_size": 50, "priority": "low"})
        );
        assert!(entries.iter().all(|e| e.enabled && e.args.is_empty()));

        // Next runs of every default entry from one instant.
        let from = t("2026-02-28T23:52:00Z");
        let next: Vec<DateTime<Utc>> = entries
            .iter()
            .map(|e| e.schedule.next_after(from).unwrap())
            .collect();
        assert_eq!(
            next,
            vec![
                t("2026-02-28T23:55:00Z"),
                t("2026-03-01T00:00:00Z"),
                t("2026-03-01T00:00:00Z"),
                t("2026-03-01T00:00:00Z"),
                t("2026-03-01T00:00:00Z"),
                t("2026-03-01T00:00:00Z"),
                t("2026-03-01T03:00:00Z"),
            ]
        );
        // Over one day: 288 + 144 + 48 + 12 + 12 + 96 + 1 slots.
        let day_start = t("2026-03-01T00:00:00Z");
        let counts: Vec<usize> = entries
            .iter()
            .map(|e| {
                let mut n = 0;
                let mut at = day_start - chrono::Duration::seconds(1);
                while let Some(s) = e.schedule.next_after(at) {
                    if s >= day_start + chrono::Duration::days(1) {
                        break;
                    }
                    n += 1;
                    at = s;
                }
                n
            })
            .collect();
        assert_eq!(counts, vec![288, 144, 48, 12, 12, 96, 1]);
        assert!(matches!(entries[0].schedule, Schedule::Crontab(_)));
    }
}
