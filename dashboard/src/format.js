// Human-readable numbers for the table: decimal byte units (as the Hugging Face Hub shows
// them), rates, durations, parameter counts.

const BYTE_UNITS = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];

/** `1234567` → `"1.2 MB"`; null → `"—"`. */
export function bytes(value) {
  if (value === null || value === undefined) return '—';
  let amount = Number(value);
  let unit = 0;
  while (amount >= 1000 && unit < BYTE_UNITS.length - 1) {
    amount /= 1000;
    unit += 1;
  }
  const digits = unit === 0 || amount >= 100 ? 0 : 1;
  return `${amount.toFixed(digits)} ${BYTE_UNITS[unit]}`;
}

/** Bytes per second → `"256 kB/s"`. */
export function rate(value) {
  return value === null || value === undefined ? '—' : `${bytes(value)}/s`;
}

/** Seconds → `"42 s"`, `"3 min 5 s"`, `"2 h 10 min"`. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return '—';
  const total = Math.max(0, Math.round(Number(seconds)));
  if (total < 60) return `${total} s`;
  if (total < 3600) return `${Math.floor(total / 60)} min ${total % 60} s`;
  return `${Math.floor(total / 3600)} h ${Math.floor((total % 3600) / 60)} min`;
}

/** A parameter count → `"1.1 B"`, `"350 M"`. */
export function parameters(value) {
  if (value === null || value === undefined) return '—';
  const n = Number(value);
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(0)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(0)} k`;
  return String(n);
}

/** Percentage of done/total, 0 to 100, one decimal. */
export function percent(done, total) {
  const t = Number(total);
  if (!t) return 0;
  return Math.min(100, Math.round((Number(done) / t) * 1000) / 10);
}

/** Local time of an ISO timestamp, `HH:MM:SS`. */
export function clock(iso) {
  if (!iso) return '';
  return new Date(iso).toLocaleTimeString([], { hour12: false });
}

/** Time from one ISO timestamp to another (or to now): tenths under 10 s, then `duration`. */
export function elapsed(fromIso, toIso = null) {
  const ms = (toIso ? Date.parse(toIso) : Date.now()) - Date.parse(fromIso);
  if (!Number.isFinite(ms)) return '—';
  return ms < 10_000 ? `${(Math.max(0, ms) / 1000).toFixed(1)} s` : duration(ms / 1000);
}
