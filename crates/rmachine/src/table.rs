//! Column alignment as Go's `text/tabwriter` does it for docker-machine's `ls`
//! (minwidth 5, tabwidth 1, padding 3, padding with spaces).
//!
//! Each line is a list of cells; every cell but the last is padded to its column's width
//! (the widest cell plus the padding, at least the minimum width). The last cell is written
//! as is, exactly like a tabwriter cell that no tab terminates.

/// Minimum column width.
const MIN_WIDTH: usize = 5;
/// Spaces added to the widest cell of a column.
const PADDING: usize = 3;

/// Aligns `rows` into lines, each ending in `\n`.
pub fn render(rows: &[Vec<String>]) -> String {
    let columns = rows
        .iter()
        .map(|r| r.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            let widest = rows
                .iter()
                .filter(|r| c + 1 < r.len())
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0);
            (widest + PADDING).max(MIN_WIDTH)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn header_alone_matches_docker_machine() {
        let header = row(&[
            "NAME", "ACTIVE", "DRIVER", "STATE", "URL", "SWARM", "DOCKER", "ERRORS",
        ]);
        assert_eq!(
            render(&[header]),
            "NAME   ACTIVE   DRIVER   STATE   URL   SWARM   DOCKER   ERRORS\n"
        );
    }

    #[test]
    fn rows_match_docker_machines_example() {
        let rows = [
            row(&[
                "NAME", "ACTIVE", "DRIVER", "STATE", "URL", "SWARM", "DOCKER", "ERRORS",
            ]),
            row(&[
                "intro",
                "*",
                "virtualbox",
                "Running",
                "tcp://192.168.99.100:2376",
                "",
                "v19.03.5",
                "",
            ]),
        ];
        assert_eq!(
            render(&rows),
            "NAME    ACTIVE   DRIVER       STATE     URL                         SWARM   DOCKER     ERRORS\n\
             intro   *        virtualbox   Running   tcp://192.168.99.100:2376           v19.03.5   \n"
        );
    }
}
