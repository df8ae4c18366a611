"""Demo data: a trading company with a warehouse, two shops, five salespeople, four POS
terminals, a large catalog and a few weeks of history, loaded through the change log.

Everything is drawn from one seeded ``random.Random`` (UUIDs included), so a load is
reproducible. Synced rows go through :func:`write_changes` so devices receive them like
any other change; ids are explicit so 10,000 products need no per-row RETURNING.
"""

from __future__ import annotations

import random
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass
import sqlalchemy as sa

from sync.changes import now_ms as clock, write_changes
from sync.schema import Registry
from sync.storage import Database

from .tables import branches, counters, orders, payments, pricelists, prices, sales, stock, tenants, users, visits
from .tables import customers as customer_table, products as product_table  # load_demo's arguments shadow them

SLUG, COMPANY, CURRENCY = "demo", "Demo Trading Co.", "EUR"
DAY, HOUR, MINUTE = 86_400_000, 3_600_000, 60_000
CHUNK = 5000  # rows per insert call
COUNTED = (branches, pricelists, users, product_table, prices, stock, customer_table, orders, sales, payments, visits)
ID_TABLES = (tenants, branches, pricelists, users, customer_table, product_table, prices, stock)  # keys we assign
CREDIT_USE = 0.6  # history never takes a balance past this share of the limit: new demo orders must pass

# category: (units, retail price range in cents, bases, mids, ends); a product is "<base> <mid> <end>"
CATALOG: dict[str, tuple[str, tuple[int, int], str, str | list[str], str]] = {
    "Fasteners": ("box,pcs", (15, 2500), "Hex Bolt,Cap Screw,Wood Screw,Set Screw,Coach Bolt,Flange Bolt,Stud Bolt,"
                  "Pan Screw", [f"M{d}x{n}" for d in (3, 4, 5, 6, 8, 10, 12, 16)
                                for n in (10, 12, 16, 20, 25, 30, 40, 50, 60, 80, 100)], "Zinc,Steel,A2,A4,Brass"),
    "Tools": ("pcs", (150, 4500), "Drill Bit,Hex Key,Spanner,Socket,Chisel,Hole Saw,Tap,Countersink",
              [f"{n}mm" for n in range(2, 61)], "HSS,CrV,Pro,Cobalt"),
    "Hardware": ("pcs", (120, 6500), "Hinge,Door Handle,Padlock,Bracket,Hasp,Knob,Drawer Slide,Hook,Latch,"
                 "Shelf Pin", [f"{n}mm" for n in range(20, 301, 10)], "Chrome,Black,Brass,Nickel,White,Steel"),
    "Electrical": ("m", (40, 900), "Cable H05VV,Cable NYM,Flex Cable,Earth Cable,Speaker Cable",
                   [f"{c}x{s}" for c in range(1, 6) for s in ("0.75", "1", "1.5", "2.5", "4", "6", "10")],
                   "Grey,Black,White,Blue,Red"),
    "Lighting": ("pcs", (199, 3500), "LED Bulb E27,LED Bulb E14,LED Spot GU10,LED Tube T8,LED Panel",
                 [f"{w}W" for w in range(1, 31)], "2700K,3000K,4000K,6500K"),
    "Paint": ("pcs", (450, 9000), "Wall Paint,Primer,Wood Stain,Varnish,Enamel,Floor Paint,Spray Paint",
              "White,Ivory,Grey,Anthracite,Black,Red,Blue,Green,Yellow,Oak,Walnut,Teak,Sand,Clear",
              "0.4L,0.75L,1L,2.5L,5L,10L"),
    "Grocery": ("pcs,kg", (89, 1800), "Olive Oil,Basmati Rice,Penne,Spaghetti,Passata,Flour,Sugar,Sea Salt,Honey,"
                "Oat Flakes,Lentils,Chickpeas", "Organic,Classic,Premium,Value,Bio", "250g,500g,750g,1kg,2kg,5kg"),
    "Beverages": ("pcs", (49, 450), "Orange Juice,Apple Juice,Mineral Water,Sparkling Water,Cola,Iced Tea,Lemonade,"
                  "Tonic Water,Ginger Ale,Cold Brew", "Classic,Zero,Organic,Light,Premium", "0.25L,0.33L,0.5L,1L,2L"),
    "Cleaning": ("pcs,l", (99, 1500), "Dish Soap,Glass Cleaner,Floor Cleaner,Bleach,Hand Soap,Degreaser,Descaler,"
                 "Laundry Gel,Toilet Gel,Disinfectant", "Lemon,Pine,Fresh,Lavender,Unscented,Ocean",
                 "500ml,750ml,1L,2L,5L"),
    "Office": ("pcs,box", (49, 3500), "Copy Paper A4,Ballpoint Pen,Gel Pen,Marker,Binder,Sticky Notes,Envelopes C5,"
               "Notebook A5,Stapler,Folder", "Blue,Black,Red,Green,White,Yellow", "x1,x5,x10,x50,x100"),
}
STAFF = ("Margot Visser,Lukas Becker,Sofia Romano,Jan Novak,Emma Laurent,Marco Silva,Eva Lindqvist,Pieter de Wit,"
         "Lena Hoffmann,Tomás Ruiz").split(",")  # admin, sales1..5, pos1..4
FIRST, SURNAMES, TRADES, WORDS, STREETS = (line.split(",") for line in """\
Anna,Lukas,Sofia,Jan,Emma,Marco,Eva,Pieter,Lena,Tomás,Julia,Noah,Clara,Mateo,Sara,Felix,Ines,Daan
Bakker,Janssen,Müller,Rossi,Dubois,Novak,Jensen,Kowalski,Schmidt,Visser,Moreau,Ferrari,García,Smit,Weber,Horvat,Costa
Hardware,Building Supply,Tools,Market,Deli,Interiors,Electrics,Paints,Home Center,Trading,Workshop,Supplies
Aurora,Central,Corner,Harbour,Lindenhof,Riverside,Golden,Sunrise,Meridian,Oak,Stellar,Vista
Market Street,Station Road,Church Lane,Harbour Way,Mill Road,Park Avenue,Linden Street,Canal Side""".splitlines())
CITIES = {"Amsterdam": (52.370, 4.895), "Rotterdam": (51.922, 4.479), "Utrecht": (52.091, 5.122),
          "Antwerp": (51.219, 4.402), "Ghent": (51.054, 3.717), "Cologne": (50.937, 6.960),
          "Düsseldorf": (51.227, 6.773), "Aachen": (50.775, 6.083), "Eindhoven": (51.441, 5.469),
          "Lille": (50.629, 3.057)}
VISIT_NOTES = (None, None, None, "Showed the new catalogue", "Owner away, call back", "Discussed payment plan")

PriceBook = dict[tuple[int, int], list[tuple[int, int | None, int]]]  # (pricelist, product) -> (from, to, amount)


@dataclass
class DemoSummary:
    tenant_id: int
    created: bool
    counts: dict[str, int]


@dataclass
class _Org:
    warehouse: int
    shops: list[int]
    retail: int
    wholesale: int
    salespeople: list[int]
    terminals: list[tuple[int, int]]  # (user id, shop id)


async def load_demo(db: Database, registry: Registry, *, products: int = 10_000, customers: int = 500,
                    days: int = 21, seed: int = 7, now_ms: int | None = None) -> DemoSummary:
    """Create tenant ``demo`` with its data, or report the rows it already has."""
    now = clock() if now_ms is None else now_ms
    tenant_id, ids = await _claim_tenant(db)
    if ids is None:
        return DemoSummary(tenant_id, False, await _counts(db, tenant_id))
    rng = random.Random(seed)
    org, branch_rows, user_rows = _organisation(rng, ids)
    catalog = _products(rng, products, ids["products"])
    book, price_rows = _prices(rng, catalog, org, now, ids["prices"])
    sellable = [p["id"] for p in catalog if p["active"]]
    clients = _customers(rng, customers, org, ids["customers"])
    order_rows, payment_rows, visit_rows = _field_history(rng, org, sellable, book, clients, now, days)
    sale_rows = _pos_history(rng, org, sellable, book, clients, now, days)
    stock_rows = _stock(rng, catalog, org, order_rows, ids["stock"])
    counts = {"pricelists": 2}
    for table, rows in ((branches, branch_rows), (users, user_rows), (product_table, catalog), (prices, price_rows),
                        (stock, stock_rows), (customer_table, clients), (orders, order_rows), (sales, sale_rows),
                        (payments, payment_rows), (visits, visit_rows)):
        counts[table.name] = await _write(db, registry, tenant_id, table, rows)
    await _finish(db, tenant_id, {"order": len(order_rows), "sale": len(sale_rows)})
    await db.analyze()
    return DemoSummary(tenant_id, True, counts)


async def _claim_tenant(db: Database) -> tuple[int, dict[str, int] | None]:
    """The tenant's id and, when it is new, the first free id of each integer-keyed table.

    Keys are global across tenants, so the demo's ids start after everyone else's.
    """
    async with db.write() as conn:
        existing = await conn.scalar(sa.select(tenants.c.id).where(tenants.c.slug == SLUG))
        if existing is not None:
            return existing, None
        ids = {t.name: (await conn.scalar(sa.select(sa.func.max(t.c.id))) or 0) + 1 for t in ID_TABLES}
        # explicit, like every id here: PostgreSQL's sequence may lag ids others inserted explicitly
        tenant_id = ids["tenants"]
        await conn.execute(sa.insert(tenants).values(id=tenant_id, slug=SLUG, name=COMPANY, currency=CURRENCY))
        # pricelists are not a synced table (no dataset serves them), so they skip the change log
        await conn.execute(sa.insert(pricelists), [
            {"id": ids["pricelists"] + i, "tenant_id": tenant_id, "name": name, "currency": CURRENCY}
            for i, name in enumerate(("Retail", "Wholesale"))])
        return tenant_id, ids


async def _counts(db: Database, tenant_id: int) -> dict[str, int]:
    async with db.read() as conn:
        return {t.name: await conn.scalar(sa.select(sa.func.count()).select_from(t).where(t.c.tenant_id == tenant_id))
                for t in COUNTED}


async def _write(db: Database, registry: Registry, tenant_id: int, table: sa.Table, rows: list[dict]) -> int:
    """One transaction (one log position) per table: thousands of rows per statement."""
    async with write_changes(db, registry, tenant_id) as changes:
        for start in range(0, len(rows), CHUNK):
            await changes.insert(table, rows[start:start + CHUNK])
    return len(rows)


async def _finish(db: Database, tenant_id: int, numbers: dict[str, int]) -> None:
    """Continue the SO-/POS- series after the history, and move PostgreSQL's sequences
    past the explicit ids so rows inserted without an id (e.g. stock a sale creates) fit."""
    async with db.write() as conn:
        for name, value in numbers.items():
            insert = db.insert(counters).values(tenant_id=tenant_id, name=name, value=value)
            await conn.execute(insert.on_conflict_do_update(index_elements=["tenant_id", "name"],
                                                            set_={"value": insert.excluded.value}))
        await db.follow_ids(conn, ID_TABLES)


def _organisation(rng: random.Random, ids: dict[str, int]) -> tuple[_Org, list[dict], list[dict]]:
    w, u, retail = ids["branches"], ids["users"], ids["pricelists"]
    org = _Org(w, [w + 1, w + 2], retail, retail + 1, [u + i for i in range(1, 6)],
               [(u + 6 + i, w + 1 + i // 2) for i in range(4)])
    branch_rows = [
        {"id": w, "name": "Central Warehouse", "kind": "warehouse", "pricelist_id": None, "address": "Dock Road 4"},
        {"id": w + 1, "name": "Shop North", "kind": "shop", "pricelist_id": retail, "address": "Market Street 12"},
        {"id": w + 2, "name": "Shop South", "kind": "shop", "pricelist_id": retail, "address": "Station Road 88"},
    ]
    logins = [("admin", "admin", None)] + [(f"sales{i}", "salesperson", w) for i in range(1, 6)] + [
        (f"pos{i + 1}", "pos", shop) for i, (_, shop) in enumerate(org.terminals)]
    user_rows = [{"id": u + i, "username": login, "name": STAFF[i], "role": role, "branch_id": branch,
                  "month_target": rng.randint(25, 60) * 100_000 if role == "salesperson" else None, "active": True}
                 for i, (login, role, branch) in enumerate(logins)]
    return org, branch_rows, user_rows


def _products(rng: random.Random, n: int, first_id: int) -> list[dict]:
    """``n`` products with distinct names drawn from the catalog's combinations."""
    pool = [(cat, f"{b} {m} {e}") for cat, (_, _, bases, mids, ends) in CATALOG.items()
            for b in _words(bases) for m in _words(mids) for e in _words(ends)]
    picked = rng.sample(pool, min(n, len(pool)))
    for j in range(len(picked), n):  # a catalog larger than the pool repeats names with a number
        cat, name = pool[j % len(pool)]
        picked.append((cat, f"{name} #{j // len(pool) + 1}"))
    rows = []
    for i, (cat, name) in enumerate(picked):
        pid = first_id + i
        rows.append({"id": pid, "sku": f"SKU-{pid:06d}", "name": name, "category": cat,
                     "unit": rng.choice(_words(CATALOG[cat][0])), "barcode": ean13(f"40{pid:010d}"[-12:]),
                     "active": rng.random() >= 0.02})
    return rows


def _words(value: str | list[str]) -> list[str]:
    return value.split(",") if isinstance(value, str) else value


def ean13(body: str) -> str:
    """A 12-digit body with its EAN-13 check digit (weights 1, 3, 1, 3, ... from the left)."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body))
    return body + str(-total % 10)


def _prices(rng: random.Random, catalog: list[dict], org: _Org, now: int,
            first_id: int) -> tuple[PriceBook, list[dict]]:
    """Retail and wholesale prices from 90 days ago, and for ~5% an older price before that,
    so which price was valid when an order was taken matters."""
    book: PriceBook = {}
    rows = []
    current, older = now - 90 * DAY, now - 180 * DAY
    for p in catalog:
        lo, hi = CATALOG[p["category"]][1]
        retail = lo * (hi / lo) ** rng.random()  # log-uniform: many cheap items, a few dear ones
        periods = [(current, None, 1.0)] + ([(older, current, rng.uniform(0.88, 0.97))] if rng.random() < 0.05 else [])
        for valid_from, valid_to, factor in periods:
            for pricelist, cents in ((org.retail, retail * factor), (org.wholesale, retail * factor * 0.85)):
                amount = max(9, round(cents / 10) * 10 - 1)  # shelf prices end in 9
                rows.append({"id": first_id + len(rows), "pricelist_id": pricelist, "product_id": p["id"],
                             "amount": amount, "currency": CURRENCY, "valid_from": valid_from, "valid_to": valid_to})
                book.setdefault((pricelist, p["id"]), []).append((valid_from, valid_to, amount))
    return book, rows


def _price_at(book: PriceBook, pricelist: int, product_id: int, at: int) -> int | None:
    for valid_from, valid_to, amount in book.get((pricelist, product_id), ()):
        if valid_from <= at and (valid_to is None or at < valid_to):
            return amount
    return None


def _customers(rng: random.Random, n: int, org: _Org, first_id: int) -> list[dict]:
    rows, seen = [], set()
    for i in range(n):
        s, t, w = rng.choice(SURNAMES), rng.choice(TRADES), rng.choice(WORDS)
        name = rng.choice((f"{s} & Sons {t}", f"{s} {t}", f"Café {w}", f"{w} {t}", f"{s} & {rng.choice(SURNAMES)}"))
        city = rng.choice(list(CITIES))
        name = name if name not in seen else f"{name} {city}"
        name = name if name not in seen else f"{name} {i}"
        seen.add(name)
        first, last = rng.choice(FIRST), rng.choice(SURNAMES)
        limit = rng.randint(5, 50) * 100_000
        rows.append({
            "id": first_id + i, "name": name, "contact_name": f"{first} {last}",
            "phone": f"+31 {rng.randint(10, 99)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
            "email": f"{_ascii(first)}@{_ascii(name)[:24]}.example",
            "address": f"{rng.choice(STREETS)} {rng.randint(1, 240)}", "city": city,
            "salesperson_id": org.salespeople[i % len(org.salespeople)],  # round-robin: disjoint books
            "branch_id": rng.choice(org.shops), "pricelist_id": org.wholesale if rng.random() < 0.8 else org.retail,
            "credit_limit": limit, "balance": rng.randint(0, limit // 4), "currency": CURRENCY,
            "version": 0, "field_versions": {},
        })
    return rows


def _ascii(text: str) -> str:
    """For e-mail addresses: "Café Müller" -> "cafemuller"."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", text.lower()) if ch.isascii() and ch.isalnum())


def _uuid(rng: random.Random) -> str:
    # shaped like the UUIDv4 keys devices make, but seeded so a load repeats exactly
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _times(rng: random.Random, now: int, age: int, count: int) -> list[int]:
    """``count`` moments in business hours (08:00-18:00 UTC) ``age`` days ago, before now."""
    opening = (now // DAY - age) * DAY + 8 * HOUR
    return sorted(t for t in (opening + rng.randrange(10 * HOUR) for _ in range(count)) if t < now - 15 * MINUTE)


def _lines(rng: random.Random, sellable: list[int], book: PriceBook, pricelist: int, at: int, most: int,
           budget: int) -> list[dict]:
    """Priced lines at the price valid at ``at``; quantities keep a line near ``budget`` cents."""
    lines = []
    for pid in sorted(rng.sample(sellable, min(len(sellable), rng.randint(1, most)))):
        price = _price_at(book, pricelist, pid, at)
        if price is not None:
            qty = rng.randint(1, max(1, min(48, budget // price)))
            lines.append({"product_id": pid, "qty": qty, "price": price, "amount": qty * price})
    return lines


def _field_history(rng: random.Random, org: _Org, sellable: list[int], book: PriceBook, clients: list[dict],
                   now: int, days: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Visits, orders and payments, day by day so each customer's balance evolves in order:
    balance = opening + orders not cancelled - payments, kept under CREDIT_USE of the limit."""
    orders_, payments_, visits_ = [], [], []
    mine = {rep: [c for c in clients if c["salesperson_id"] == rep] for rep in org.salespeople}
    for age in range(days - 1, -1, -1):
        for rep in org.salespeople:
            for t in _times(rng, now, age, rng.randint(4, 8) if mine[rep] else 0):
                client = rng.choice(mine[rep])
                lat, lon = CITIES[client["city"]]
                visits_.append({"id": _uuid(rng), "customer_id": client["id"], "salesperson_id": rep,
                                "checked_in_at": t, "lat": round(lat + rng.uniform(-0.03, 0.03), 5),
                                "lon": round(lon + rng.uniform(-0.03, 0.03), 5), "note": rng.choice(VISIT_NOTES)})
                wants = rng.random() < 0.6
                order = _order(rng, client, rep, org, sellable, book, t + 10 * MINUTE, now) if wants else None
                if order is not None:
                    orders_.append(order)
                elif client["balance"] >= 5_000 and rng.random() < 0.7:
                    payments_.append(_payment(rng, client, rep, t + 5 * MINUTE))
    orders_.sort(key=lambda o: o["taken_at"])
    for n, order in enumerate(orders_, 1):
        order["number"] = f"SO-{n:06d}"
    return orders_, payments_, visits_


def _order(rng: random.Random, client: dict, rep: int, org: _Org, sellable: list[int], book: PriceBook,
           at: int, now: int) -> dict | None:
    """An order the credit check would have let through, or None; updates the balance."""
    lines = _lines(rng, sellable, book, client["pricelist_id"], at, 5, 50_000)
    total = sum(line["amount"] for line in lines)
    if not lines or client["balance"] + total > client["credit_limit"] * CREDIT_USE:
        return None
    age = now - at
    status = ("confirmed" if age < 2 * DAY else "shipped" if age < 5 * DAY else "delivered")
    if age > DAY and rng.random() < 0.03:
        status = "cancelled"
    else:
        client["balance"] += total
    return {"id": _uuid(rng), "number": "", "customer_id": client["id"], "salesperson_id": rep,
            "branch_id": org.warehouse, "status": status, "lines": lines, "total": total, "currency": CURRENCY,
            "note": rng.choice((None,) * 8 + ("Deliver before 10:00", "Call on arrival")), "taken_at": at,
            "created_at": min(now, at + rng.randrange(30 * MINUTE))}


def _payment(rng: random.Random, client: dict, rep: int, at: int) -> dict:
    amount = min(client["balance"], max(1_000, round(client["balance"] * rng.uniform(0.3, 1.0), -2)))
    client["balance"] -= amount
    method = rng.choice(("cash", "card", "transfer", "transfer"))
    return {"id": _uuid(rng), "customer_id": client["id"], "salesperson_id": rep, "amount": amount,
            "currency": CURRENCY, "method": method, "paid_at": at,
            "reference": f"TRX-{rng.randrange(10**6):06d}" if method == "transfer" else None}


def _pos_history(rng: random.Random, org: _Org, sellable: list[int], book: PriceBook, clients: list[dict],
                 now: int, days: int) -> list[dict]:
    """About 30 retail sales per terminal per day; a few name a regular customer of the shop."""
    regulars = {shop: [c["id"] for c in clients if c["branch_id"] == shop] for shop in org.shops}
    rows = []
    for age in range(days - 1, -1, -1):
        for user, shop in org.terminals:
            for t in _times(rng, now, age, rng.randint(24, 36)):
                lines = _lines(rng, sellable, book, org.retail, t, 4, 600)
                if not lines:
                    continue
                regular = rng.choice(regulars[shop]) if regulars[shop] and rng.random() < 0.05 else None
                rows.append({"id": _uuid(rng), "number": "", "terminal_id": user, "branch_id": shop,
                             "customer_id": regular, "lines": lines, "total": sum(x["amount"] for x in lines),
                             "currency": CURRENCY, "payment_method": "card" if rng.random() < 0.6 else "cash",
                             "sold_at": t})
    rows.sort(key=lambda s: s["sold_at"])
    for n, sale in enumerate(rows, 1):
        sale["number"] = f"POS-{n:06d}"
    return rows


def _stock(rng: random.Random, catalog: list[dict], org: _Org, order_rows: list[dict], first_id: int) -> list[dict]:
    """Every product in every branch; the warehouse holds more, and covers what confirmed
    orders reserved (as order.create would have)."""
    held = Counter()
    for order in order_rows:
        if order["status"] == "confirmed":
            held.update({line["product_id"]: line["qty"] for line in order["lines"]})
    rows = []
    for branch in (org.warehouse, *org.shops):
        for p in catalog:
            reserved = held[p["id"]] if branch == org.warehouse else 0
            on_hand = rng.randint(40, 500) if branch == org.warehouse else rng.randint(0, 120)
            rows.append({"id": first_id + len(rows), "branch_id": branch, "product_id": p["id"],
                         "on_hand": max(on_hand, reserved), "reserved": reserved, "negative": False})
    return rows
