/* Intrusive circular doubly-linked list (internal).  A ListHead is embedded
 * in the listed struct; list_entry() gets the struct back.  An unlinked node
 * points to itself, so list_del() is harmless twice. */
#ifndef ZBIGARRAY_LIST_H
#define ZBIGARRAY_LIST_H

#include <stddef.h>

typedef struct ListHead {
    struct ListHead *next, *prev;
} ListHead;

#define list_entry(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))

static inline void list_init(ListHead *h) { h->next = h->prev = h; }
static inline int  list_empty(const ListHead *h) { return h->next == h; }

static inline void list__link(ListHead *n, ListHead *prev, ListHead *next)
{
    next->prev = n;
    n->next = next;
    n->prev = prev;
    prev->next = n;
}

/* Insert @n right after @h (at the head). */
static inline void list_add(ListHead *n, ListHead *h) { list__link(n, h, h->next); }
/* Insert @n right before @h (at the tail). */
static inline void list_add_tail(ListHead *n, ListHead *h) { list__link(n, h->prev, h); }

static inline void list_del(ListHead *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    list_init(n);
}

static inline void list_move(ListHead *n, ListHead *h) { list_del(n); list_add(n, h); }

/* Not for loops that unlink @pos: use list_for_each_safe. */
#define list_for_each_forward(pos, head) \
    for (pos = (head)->next; pos != (head); pos = pos->next)

#define list_for_each_safe(pos, tmp, head) \
    for (pos = (head)->next, tmp = pos->next; pos != (head); pos = tmp, tmp = pos->next)

#endif /* ZBIGARRAY_LIST_H */
