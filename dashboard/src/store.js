// The page's copy of one page of the organisation's models (in the server's order), and how an
// event changes it.
//
// Events carry the new phase or the download progress but not whole resources, so `applyEvent`
// updates what it can in place and names the models to read again with the `DashboardModel`
// query when an event says more changed than it carries (created, updated, an inference's
// reason and replicas, or a model the page has not seen yet).

/** Weights states in which a download is still under way. */
export const ACTIVE_DOWNLOAD = new Set(['PENDING', 'PULLING']);

export class ModelStore {
  constructor() {
    /** @type {Map<string, object>} id → DashboardModelFields */
    this.models = new Map();
    /** The ids in the order the server listed them. */
    this.order = [];
  }

  /** Replaces everything with a fresh page of models. */
  replaceAll(items) {
    const live = items.filter((m) => !m.isDeleted);
    this.models = new Map(live.map((m) => [m.id, m]));
    this.order = live.map((m) => m.id);
  }

  has(id) {
    return this.models.has(id);
  }

  /** Inserts or replaces one model (a deleted one is removed). */
  upsert(model) {
    if (model.isDeleted) this.models.delete(model.id);
    else this.models.set(model.id, model);
  }

  remove(id) {
    this.models.delete(id);
  }

  /** The page's models in the server's order. */
  sorted() {
    return this.order.filter((id) => this.models.has(id)).map((id) => this.models.get(id));
  }

  /**
   * Applies one event. Returns `{ changed, refetch, resync }`: ids whose rows need drawing
   * again, ids to read again with a query, and whether everything must be re-read.
   */
  applyEvent(event) {
    const changed = new Set();
    const refetch = new Set();
    if (event.type === 'RESYNC_REQUIRED') return { changed, refetch, resync: true };
    if (event.type === 'OVERFLOW') return { changed, refetch, resync: false };

    if (event.resourceKind === 'MODEL') {
      const id = event.resourceId;
      const model = this.models.get(id);
      if (event.type === 'DELETED') {
        this.models.delete(id);
        changed.add(id);
      } else if (event.type === 'PHASE_CHANGED' && model) {
        model.phase = event.phase;
        model.message = event.message;
        changed.add(id);
      } else {
        refetch.add(id);
      }
    } else if (event.resourceKind === 'WEIGHTS') {
      for (const id of event.modelIds) {
        const model = this.models.get(id);
        const weights = model?.weights;
        if (!weights || weights.id !== event.resourceId) {
          refetch.add(id);
        } else if (event.type === 'PROGRESS' && event.progress) {
          // A download that has finished (or was re-read as finished) keeps its final figures;
          // a retried one announces PENDING/PULLING before it reports progress again.
          if (ACTIVE_DOWNLOAD.has(weights.state)) {
            weights.progress = { ...weights.progress, ...event.progress };
            changed.add(id);
          }
        } else if (event.type === 'PHASE_CHANGED') {
          weights.state = event.phase;
          weights.message = event.message;
          changed.add(id);
        } else if (event.type === 'DELETED') {
          model.weights = null;
          changed.add(id);
        } else {
          refetch.add(id);
        }
      }
    } else if (event.resourceKind === 'INFERENCE') {
      for (const id of event.modelIds) {
        // The badge moves at once; the reason, replicas and `enabled` come with the re-read.
        const inference = this.models.get(id)?.inference;
        if (event.type === 'PHASE_CHANGED' && inference?.id === event.resourceId) {
          inference.phase = event.phase;
          inference.reason = null;
          inference.message = event.message;
          changed.add(id);
        }
        refetch.add(id);
      }
    }
    return { changed, refetch, resync: false };
  }
}
